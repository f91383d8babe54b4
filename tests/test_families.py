"""Families of operating points (per-input gated and dual-mode sweeps) kept by the study,
carried by every front extraction and front file, and overlaid by the plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model

import paretoskip
from paretoskip.checkpoint import weights_fingerprint
from paretoskip.cli import main
from paretoskip.dynamic import dynamic_family
from paretoskip.errors import ConfigError
from paretoskip.front import Front
from paretoskip.plots import build_fronts
from paretoskip.plots.fronts import family_label, family_points
from paretoskip.study import StudyDB


@pytest.fixture(scope="module")
def searched(digits, tmp_path_factory):
    """A small real study on disk: (db path, weights fingerprint, full-model FLOPs)."""
    path = tmp_path_factory.mktemp("families") / "fam.db"
    model = make_tiny_model()
    ev = paretoskip.Evaluator(model, digits)
    paretoskip.search(
        ev, budget=12, engine="random", storage=path, study_name="fam", progress=False
    )
    return path, weights_fingerprint(model), float(ev.costs.full_flops)


def _family(full: float, name="layer-gated", kind="dynamic", weights=None, sweep="target"):
    points = [
        {
            sweep: t,
            "val": {"accuracy": a, "n": 360, "flops": {"mean": f * full, "std": 0.05 * full}},
            "test": {"accuracy": a - 0.01, "flops": {"mean": (f + 0.01) * full, "std": 0.04}},
        }
        for t, a, f in [(0.5, 0.30, 0.55), (0.7, 0.36, 0.72), (0.9, 0.35, 0.9)]
    ]
    prov = {"weights_fingerprint": weights} if weights else None
    return dynamic_family(
        points, name=name, label=f"{name} label", kind=kind, sweep=sweep, provenance=prov
    )


def test_families_live_in_the_study_and_survive_extraction(searched, tmp_path):
    path, weights, full = searched
    db = StudyDB.load(path)
    assert db.families() == []
    front = Front.from_study(db)
    assert front.families == []
    front.add_family(_family(full, weights=weights))
    front.add_family(_family(full, "dual", kind="dual", weights=weights, sweep="budget"))
    # a fresh handle: the study kept both, the next extraction carries them
    again = Front.from_study(StudyDB.load(path))
    assert [f["name"] for f in again.families] == ["layer-gated", "dual"]
    assert again.families == front.families
    assert again.members == front.members  # the static front is untouched
    out, _ = again.save(tmp_path / "f.json")
    loaded = Front.load(out)
    assert [f["cost_basis"] for f in loaded.families] == ["mean_per_input"] * 2
    # replacing keeps one of a name; removing drops it from the study
    db.set_family(_family(full, weights=weights) | {"label": "renamed"})
    assert [f.get("label") for f in db.families()] == ["renamed", "dual label"]
    assert db.remove_family("layer-gated") is True
    assert db.remove_family("layer-gated") is False
    assert [f["name"] for f in Front.from_study(StudyDB.load(path)).families] == ["dual"]
    assert db.remove_family("dual")
    assert "families" not in Front.from_study(StudyDB.load(path)).data


def test_a_family_of_other_weights_is_refused(searched):
    path, weights, full = searched
    db = StudyDB.load(path)
    other = _family(full, "alien", weights="f" * 64)
    with pytest.raises(ConfigError, match=r"family 'alien' was made from other weights \(ffff"):
        db.set_family(other)
    with pytest.raises(ConfigError, match="other weights"):
        Front.from_study(db).add_family(other)
    assert db.families() == []
    db.set_family(other, force=True)
    assert [f["name"] for f in db.families()] == ["alien"]
    db.remove_family("alien")
    with pytest.raises(ConfigError, match=r"kind is 'fast'; accepted: 'static', 'dynamic'"):
        db.set_family({**_family(full), "kind": "fast"})
    with pytest.raises(ConfigError, match="must be a mapping, not list"):
        db.set_family([1, 2])


def test_family_points_and_legend():
    fam = _family(1000.0, kind="dual", sweep="budget")
    pts, spread = family_points(fam["members"], "flops", "accuracy")
    assert pts[:, 0].tolist() == [550.0, 720.0, 900.0]
    assert pts[:, 1].tolist() == pytest.approx([0.30, 0.36, 0.35])
    assert spread.tolist() == pytest.approx([50.0] * 3)
    # against test accuracy the cost is the test split's own mean
    pts, spread = family_points(fam["members"], "flops", "test_accuracy")
    assert pts[:, 0].tolist() == pytest.approx([560.0, 730.0, 910.0])
    assert pts[:, 1].tolist() == pytest.approx([0.29, 0.35, 0.34])
    assert spread.tolist() == pytest.approx([0.04] * 3)
    # a metric the family does not have is left out, never drawn as 0
    assert len(family_points(fam["members"], "params", "accuracy")[0]) == 0
    text = family_label(fam)
    assert "mean per input ± std" in text and "every input within its budget" in text
    assert family_label({"name": "x", "members": []}, "study") == "study: x"


def test_the_overlay_draws_every_family(searched):
    path, weights, full = searched
    front = Front.from_study(StudyDB.load(path))
    front.data["families"] = [_family(full), _family(full, "dual", kind="dual", sweep="budget")]
    fig = build_fronts(front)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("layer-gated label (mean per input ± std) (3)") for t in texts)
    assert any("every input within its budget" in t for t in texts)
    ax = fig.axes[0]
    # the family points are drawn where they are (accuracy in %, FLOPs in the axis' unit)
    shown_y = sorted(
        round(float(y), 6) for c in ax.collections for y in np.asarray(c.get_offsets())[:, 1]
    )
    for acc in (30.0, 36.0, 35.0):
        assert any(abs(y - acc) < 1e-6 for y in shown_y), (acc, shown_y)
    plain = build_fronts(front, families=False)
    assert not any("mean per input" in t.get_text() for t in plain.legends[0].get_texts())


def test_family_command_and_the_plot_overlay(searched, tmp_path, capsys):
    path, weights, full = searched
    # a benchmarks/dynamic.py result: families beside the backbone's fingerprint
    doc = {"backbone": {"weights_fingerprint": weights}, "families": [_family(full)]}
    doc["families"].append(_family(full, "dual", kind="dual", sweep="budget"))
    (tmp_path / "dyn.json").write_text(json.dumps(doc))
    assert main(["family", "add", str(path), str(tmp_path / "dyn.json"), "--name", "dual"]) == 0
    assert main(["family", "add", str(path), str(tmp_path / "dyn.json")]) == 0
    capsys.readouterr()
    assert main(["family", "list", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dual" in out and "layer-gated" in out and "mean_per_input" in out
    stored = StudyDB.load(path).families()
    assert stored[0]["provenance"]["weights_fingerprint"] == weights
    assert main(["plot", str(path), "--out", str(tmp_path / "plots")]) == 0
    files = [Path(line) for line in capsys.readouterr().out.split()]
    names = {f.name for f in files}
    assert {"fam_families.png", "fam_families-test.png", "fam_families.pdf"} <= names
    assert all(f.is_file() and f.stat().st_size > 1000 for f in files)
    # a front file is drawn as it is: the overlay, families included
    front = Front.from_study(StudyDB.load(path))
    json_path, _ = front.save(tmp_path / "fam.front.json")
    assert main(["plot", str(json_path), "--out", str(tmp_path / "p2")]) == 0
    assert [Path(p).name for p in capsys.readouterr().out.split()] == [
        "fam_fronts.png",
        "fam_fronts.pdf",
    ]
    assert main(["family", "remove", str(path), "dual", "layer-gated"]) == 0
    assert StudyDB.load(path).families() == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["family", "remove", "{db}", "nope"], "has no family ['nope']; it has: none"),
        (["family", "add", "{db}"], "`family add` needs JSON files after the study"),
        (["family", "add", "{db}", "{tmp}/missing.json"], "missing.json does not exist"),
        (["family", "add", "{db}", "{tmp}/empty.json"], "holds no families"),
        (["family", "add", "{db}", "{tmp}/alien.json"], "other weights"),
        (["family", "list", "{db}", "x"], "`family list` takes only the study"),
        (["family", "list", "{tmp}/none.db"], "none.db does not exist"),
    ],
)
def test_family_command_errors(searched, tmp_path, capsys, argv, message):
    path, _, full = searched
    (tmp_path / "empty.json").write_text('{"families": []}')
    (tmp_path / "alien.json").write_text(json.dumps(_family(full, "alien", weights="e" * 64)))
    argv = [a.format(db=path, tmp=tmp_path) for a in argv]
    assert main(argv) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert message in err, err
