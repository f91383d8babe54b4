"""Registries refuse a second registration of a name; a trial decodes into one record."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

import paretoskip
from paretoskip.energy import EstimatedMeter, register_backend
from paretoskip.errors import ConfigError
from paretoskip.models import register_model
from paretoskip.search import ENGINES, Engine, make_engine, register_engine
from paretoskip.study import StudyDB


def test_engine_names_are_registered_once():
    n = len(ENGINES)
    with pytest.raises(ConfigError, match="engine 'tpe' is registered already"):
        register_engine("tpe", "another TPE", lambda seed=0: None)
    assert len(ENGINES) == n and ENGINES["tpe"].startswith("Optuna TPESampler")


def test_a_registered_engine_is_found_and_its_options_checked(monkeypatch):
    from paretoskip.search import _base

    class Fixed(Engine):
        name = "fixed-test"

        def __init__(self, seed: int = 0, masks: int = 1):
            super().__init__(seed, masks=masks)

        def run(self, ctx):  # pragma: no cover - not searched here
            pass

    monkeypatch.setattr(_base.ENGINES, "_specs", dict(_base.ENGINES._specs))
    register_engine("fixed-test", "a test engine", Fixed, options=("masks",))
    assert "fixed-test" in ENGINES
    assert make_engine("fixed-test", 3, masks=2).describe() == {
        "engine": "fixed-test",
        "seed": 3,
        "masks": 2,
    }
    with pytest.raises(ConfigError, match=r"does not take \['mask'\]; did you mean 'masks'"):
        make_engine("fixed-test", mask=2)


def test_model_names_are_registered_once_and_builders_follow_the_contract():
    with pytest.raises(ConfigError, match="model 'resnet20' is registered already"):
        register_model("resnet20", lambda **kw: None)
    with pytest.raises(
        ConfigError, match=r"does not take \['in_channels', 'input_size', 'p_last'\]"
    ):

        @register_model("no-contract-test")
        def build(num_classes: int = 10):  # pragma: no cover - refused
            return None

    assert "no-contract-test" not in paretoskip.list_models()


def test_energy_backends_are_registered_once():
    with pytest.raises(ConfigError, match="'estimated' is empty, reserved or taken"):
        register_backend(EstimatedMeter)


def test_trial_record_decodes_told_and_running_trials():
    meta = {
        "schema_version": 1,
        "space": {"units": ["a", "b", "c"], "locked": [], "groups": [["b", "c"]]},
        "objectives": [
            {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
            {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
        ],
        "constraints": ["flops <= 10"],
    }
    db = StudyDB.open(":memory:", "r", meta=meta)
    dists = {p: CategoricalDistribution((0, 1)) for p in db.space.param_names}
    told = optuna.trial.create_trial(
        params={"skip.a": 1, "skip.b+c": 0},
        distributions=dists,
        values=[0.5, 12.0],
        user_attrs={"mask": "100", "engine": "x",
                    "metrics": {"flops": {"value": 12.0, "unit": "FLOPs", "source": "counted"}},
                    "generation": 2, "worker": "h:1", "cache_hit": False},
        constraints={"flops <= 10": 2.0},
    )  # fmt: skip
    db.study.add_trial(told)
    running = db.study.ask()
    for p, d in dists.items():
        running.suggest_categorical(p, d.choices)
    [done] = db.records()
    assert (done.mask, done.values, done.feasible, done.engine, done.generation) == (
        "100",
        (0.5, 12.0),
        False,
        "x",
        2,
    )
    assert done.constraints == {"flops <= 10": 2.0} and done.completed
    assert done.evaluation(db.space).metrics["flops"].value == 12.0
    [live] = db.records(states=(TrialState.RUNNING,))
    expected = db.space.to_bitstring(
        db.space.mask_from_genes([running.params[p] for p in db.space.param_names])
    )
    assert live.params_complete and live.mask == expected and not live.completed
    assert db.record_of(running).state == TrialState.RUNNING
    assert db.fail(running) and not db.fail(running)  # the second finds it finished
