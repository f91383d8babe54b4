"""The metric table is the one place a metric is described: objectives, study files, plots,
the command line and the run-time selector all read it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paretoskip import metrics
from paretoskip.config import parse_study_config
from paretoskip.errors import ConfigError
from paretoskip.metrics import METRICS, MetricSpec, Needs, parse_objectives

PACKAGE = Path(metrics.__file__).resolve().parent


def test_table_holds_what_the_old_lists_held():
    assert metrics.objective_names() == ("accuracy", "flops", "params", "latency", "energy")
    assert metrics.budget_names() == ("accuracy", "flops", "params", "latency", "energy")
    assert {n for n, s in METRICS.items() if s.direction == "maximize"} == {
        "accuracy",
        "test_accuracy",
    }
    assert METRICS["latency"].needs.setting == "latency"
    assert METRICS["energy"].needs.met_by(type("S", (), {"energy": "auto"})())
    assert not METRICS["energy"].needs.met_by(type("S", (), {"energy": "none"})())
    assert metrics.direction_of("something_new") == "minimize"
    with pytest.raises(ConfigError, match="unknown metric 'watts'; accepted: accuracy"):
        metrics.metric("watts")


def test_a_new_metric_is_one_row(monkeypatch):
    """A row added to the table is accepted as an objective, in study files, by the plots'
    axes, by the CLI's select flags and by the run-time selector's directions."""
    row = MetricSpec(
        "gate_flops",
        "minimize",
        "FLOPs",
        objective=True,
        budget=True,
        needs=Needs("latency", off=False, example=True),
        budget_help="mean FLOPs per input, e.g. 50%",
        label="Mean FLOPs",
        axis="Mean compute ({prefix}FLOPs per input)",
        scale="si",
    )
    monkeypatch.setitem(METRICS, "gate_flops", row)  # type: ignore[index]
    assert [o.direction for o in parse_objectives(["accuracy", "gate_flops"])] == [
        "maximize",
        "minimize",
    ]
    doc = {
        "study": {"name": "x"},
        "model": {"name": "resnet20", "train": {}},
        "data": {"name": "digits"},
        "search": {"objectives": ["accuracy", "gate_flops"]},
    }
    with pytest.raises(ConfigError, match=r"'gate_flops' needs measure.latency = true"):
        parse_study_config(doc)
    doc["measure"] = {"latency": True}
    assert parse_study_config(doc).search.objectives == ("accuracy", "gate_flops")

    from paretoskip.plots import axis_for

    assert axis_for("gate_flops", np.array([2.5e6])).label == "Mean compute (MFLOPs per input)"
    from paretoskip.cli import build_parser

    args = build_parser().parse_args(["select", "f.json", "--gate_flops", "50%"])
    assert args.gate_flops == "50%"
    assert metrics.direction_of("gate_flops") == "minimize"


def test_spec_rejects_a_bad_row():
    with pytest.raises(ConfigError, match="direction"):
        MetricSpec("x", "up", "u")
    with pytest.raises(ConfigError, match="scale"):
        MetricSpec("x", "minimize", "u", scale="log")


def test_light_modules_import_neither_torch_nor_sqlalchemy_nor_optuna():
    """metrics, frontfile and storage, imported without the package facade (which loads
    everything), pull in none of the heavy libraries; a front file validates there."""
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    "paretoskip", {str(PACKAGE / "__init__.py")!r}, submodule_search_locations=[{str(PACKAGE)!r}]
)
sys.modules["paretoskip"] = importlib.util.module_from_spec(spec)  # the facade is not run
import paretoskip.frontfile, paretoskip.metrics, paretoskip.storage
doc = {{"schema_version": 1, "space": {{"units": ["a"]}}, "reference": {{"metrics": {{}}}},
       "objectives": [{{"name": "flops", "direction": "minimize"}}],
       "members": [{{"mask": "1", "metrics": {{"flops": {{"value": 2.0}}}}}}]}}
paretoskip.frontfile.validate_front(doc)
paretoskip.storage.StorageLocation.parse("studies/x.db").cache_url
heavy = {{"torch", "sqlalchemy", "optuna"}} & set(sys.modules)
assert not heavy, heavy
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
