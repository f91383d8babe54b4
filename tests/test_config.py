"""Study files: validation errors name the file, the key and the accepted values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from paretoskip.config import load_study_config, parse_study_config
from paretoskip.errors import ConfigError
from paretoskip.pipeline import build_data, build_evaluator, build_model, front_path

REPO = Path(__file__).resolve().parent.parent
MINIMAL = '[model]\nname = "resnet20"\n[data]\nname = "digits"\n'


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_study_config(path, **kw)
    return str(info.value)


# --------------------------------------------------------------------------- shipped studies


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "studies").glob("*.toml")))
def test_shipped_studies_are_valid(name):
    cfg = load_study_config(REPO / "studies" / name)
    assert cfg.name == Path(name).stem
    assert cfg.model.train.enabled  # a fresh clone trains its checkpoint
    assert cfg.storage == f"studies/{cfg.name}.db"


def test_default_study_is_small():
    cfg = load_study_config(REPO / "studies" / "digits-resnet20.toml")
    assert (cfg.model.name, cfg.data.name) == ("resnet20", "digits")
    assert cfg.model.train.recipe == "stochastic-depth" and cfg.model.train.p_last == 0.5
    assert cfg.search.engine == "pymoo-nsga2"
    assert set(cfg.search.objectives) >= {"accuracy", "flops"}
    assert cfg.search.budget is not None and cfg.search.budget <= 512


# --------------------------------------------------------------------------- defaults


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_study_config(write(tmp_path, MINIMAL + "[model.train]\nepochs = 1\n", "abc.toml"))
    assert cfg.name == "abc"
    assert cfg.storage == "studies/abc.db"
    assert cfg.model.checkpoint == "studies/checkpoints/abc"
    assert cfg.search.engine == "surrogate"
    assert cfg.search.objectives == ("accuracy", "flops")
    assert cfg.model.train.epochs == 1 and cfg.model.train.recipe == "stochastic-depth"
    assert cfg.measure.settings().latency is False
    assert front_path(cfg) == Path("studies/abc.front.json")
    assert front_path(cfg, "out") == Path("out/abc.front.json")
    assert front_path(cfg, "x/f.json") == Path("x/f.json")
    assert cfg.storage_url == "sqlite:///studies/abc.db"


def test_train_seed_defaults_to_study_seed(tmp_path):
    cfg = load_study_config(write(tmp_path, "[study]\nseed = 7\n[model.train]\n" + MINIMAL))
    assert cfg.model.train.seed == 7 and cfg.study.seed == 7


def test_replace_overrides(tmp_path):
    text = MINIMAL + "[model.train]\n[search]\nengine = 'pymoo-nsga2'\nbudget = 10\n"
    text += "[search.options]\npop_size = 8\n"
    cfg = load_study_config(write(tmp_path, text))
    new = cfg.replace(budget=20, seed=3, storage="elsewhere.db", timeout=5)
    assert (new.search.budget, new.study.seed, new.storage) == (20, 3, "elsewhere.db")
    assert new.search.options == {"pop_size": 8}
    assert cfg.replace(engine="tpe").search.options == {}  # options belonged to pymoo
    with pytest.raises(ConfigError, match="search.engine.*accepted"):
        cfg.replace(engine="nope")
    with pytest.raises(ConfigError, match="search.budget"):
        cfg.replace(budget=0)


def test_parse_without_file():
    cfg = parse_study_config(
        {
            "study": {"name": "x"},
            "model": {"name": "resnet20", "train": {}},
            "data": {"name": "digits"},
        }
    )
    assert cfg.name == "x" and cfg.path is None


# --------------------------------------------------------------------------- errors


def test_unknown_key_suggests_the_closest(tmp_path):
    path = write(tmp_path, MINIMAL + "[search]\nbudgte = 3\n")
    msg = error_of(path)
    assert str(path) in msg
    assert "'search.budgte'" in msg and "did you mean 'search.budget'" in msg
    assert "engine, budget, timeout" in msg  # the accepted keys


def test_unknown_section_suggests_the_closest(tmp_path):
    path = write(tmp_path, MINIMAL + "[serch]\nbudget = 3\n")
    msg = error_of(path)
    assert str(path) in msg and "'serch'" in msg and "did you mean 'search'" in msg


def test_unknown_nested_key(tmp_path):
    path = write(tmp_path, MINIMAL + "[model.train]\nepoch = 3\n")
    msg = error_of(path)
    assert str(path) in msg and "'model.train.epoch'" in msg and "'model.train.epochs'" in msg


@pytest.mark.parametrize(
    "text, key, what",
    [
        ("[search]\nbudget = '3'\n", "search.budget", "an integer"),
        ("[search]\nobjectives = 'accuracy'\n", "search.objectives", "a list"),
        ("[measure]\nlatency = 1\n", "measure.latency", "true or false"),
        ("[search]\noptions = 3\n", "search.options", "a table"),
        ("[data]\nlimit = 1.5\n", "data.limit", "an integer"),
    ],
)
def test_wrong_type(tmp_path, text, key, what):
    base = MINIMAL if "[data]" not in text else '[model]\nname = "resnet20"\n'
    extra = text if "[data]" not in text else text.replace("[data]\n", '[data]\nname = "digits"\n')
    path = write(tmp_path, base + extra)
    msg = error_of(path)
    assert str(path) in msg and key in msg and what in msg


def test_wrong_type_of_a_section(tmp_path):
    path = write(tmp_path, 'model = "resnet20"\n[data]\nname = "digits"\n')
    msg = error_of(path)
    assert str(path) in msg and "model must be a table" in msg


def test_unknown_engine_lists_the_accepted(tmp_path):
    path = write(tmp_path, MINIMAL + '[search]\nengine = "nsga"\n')
    msg = error_of(path)
    assert str(path) in msg and "search.engine" in msg and "'nsga'" in msg
    for engine in ("pymoo-nsga2", "tpe", "exhaustive"):
        assert engine in msg


@pytest.mark.parametrize(
    "text, key, accepted",
    [
        ('[model]\nname = "resnet21"\n[data]\nname = "digits"\n', "model.name", "resnet20"),
        ('[model]\nname = "resnet20"\n[data]\nname = "digit"\n', "data.name", "fashion-mnist"),
        (
            MINIMAL + '[search]\nobjectives = ["accuracy", "flop"]\n',
            "search.objectives[1]",
            "flops",
        ),
        (MINIMAL + '[measure]\nenergy = "rap"\n', "measure.energy", "rapl"),
        (MINIMAL + '[measure]\neval_batch = "max"\n', "measure.eval_batch='max'", '"auto"'),
        (MINIMAL + "[measure]\neval_batch = 0\n", "measure.eval_batch=0", "integer >= 1"),
        (MINIMAL + '[model.train]\nrecipe = "sd"\n', "model.train.recipe", "stochastic-depth"),
        (MINIMAL + "[search.options]\nbatc = 3\n", "search.options.batc", "batch"),
        (MINIMAL + '[space]\nlocked = ["layer1.5"]\n', "space.locked", "layer1.2"),
        (MINIMAL + "[search.epsilon]\nlatency = 0.1\n", "search.epsilon.latency", "accuracy"),
    ],
)
def test_unknown_names_list_the_accepted(tmp_path, text, key, accepted):
    path = write(tmp_path, text)
    msg = error_of(path)
    assert str(path) in msg and key in msg and accepted in msg


def test_eval_batch_auto_or_a_count(tmp_path):
    base = {
        "study": {"name": "x"},
        "model": {"name": "resnet20", "train": {}},
        "data": {"name": "digits"},
    }
    assert parse_study_config(base).measure.settings().eval_batch == "auto"
    cfg = parse_study_config({**base, "measure": {"eval_batch": 500}})
    assert cfg.measure.settings().eval_batch == 500


def test_malformed_constraint(tmp_path):
    path = write(tmp_path, MINIMAL + '[search]\nconstraints = ["accuracy > 0.9"]\n')
    msg = error_of(path)
    assert str(path) in msg and "search.constraints[0]" in msg and "accuracy >= 0.95" in msg


def test_constraint_on_unknown_metric(tmp_path):
    path = write(tmp_path, MINIMAL + '[search]\nconstraints = ["speed <= 3"]\n')
    msg = error_of(path)
    assert "search.constraints[0]" in msg and "speed" in msg and "accuracy, flops" in msg


def test_latency_objective_needs_latency_measured(tmp_path):
    path = write(tmp_path, MINIMAL + '[search]\nobjectives = ["accuracy", "latency"]\n')
    msg = error_of(path)
    assert str(path) in msg and "search.objectives[1]" in msg and "measure.latency = true" in msg


def test_one_objective_is_not_a_pareto_search(tmp_path):
    path = write(tmp_path, MINIMAL + '[search]\nobjectives = ["accuracy"]\n')
    msg = error_of(path)
    assert "search.objectives" in msg and "at least two" in msg


def test_bad_value_ranges(tmp_path):
    msg = error_of(write(tmp_path, MINIMAL + "[model.train]\np_last = 1.5\n"))
    assert "model.train.p_last" in msg
    msg = error_of(write(tmp_path, MINIMAL + "[search]\nbudget = 0\n"))
    assert "search.budget" in msg
    msg = error_of(write(tmp_path, MINIMAL.replace('"digits"', '"digits"\nval_size = 1.5')))
    assert "data.val_size" in msg
    msg = error_of(write(tmp_path, MINIMAL + "[model.kwargs]\nnum_classes = 3\n"))
    assert "model.kwargs.num_classes" in msg
    msg = error_of(write(tmp_path, MINIMAL + '[model.train]\nrecipe = "plain"\np_last = 0.5\n'))
    assert "model.train.p_last" in msg and "plain" in msg
    msg = error_of(write(tmp_path, '[study]\nname = "a b"\n' + MINIMAL))
    assert "study.name" in msg


def test_missing_required_key(tmp_path):
    path = write(tmp_path, '[model]\nname = "resnet20"\n')
    msg = error_of(path)
    assert str(path) in msg and "data.name" in msg


@pytest.mark.parametrize("train", ["", "[model.train]\nenabled = false\n"])
def test_missing_checkpoint_when_training_is_disabled(tmp_path, train):
    ckpt = tmp_path / "nowhere" / "r20"
    text = f'[model]\nname = "resnet20"\ncheckpoint = "{ckpt}"\n{train}[data]\nname = "digits"\n'
    path = write(tmp_path, text)
    msg = error_of(path)
    assert str(path) in msg and "model.checkpoint" in msg
    assert f"{ckpt}.safetensors" in msg and "cannot be trained" in msg
    # commands that only read the study database do not need it
    assert load_study_config(path, check_files=False).model.checkpoint == str(ckpt)


def test_toml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, '[model]\nname = "resnet20"\n[data\nname = "digits"\n')
    msg = error_of(path)
    assert str(path) in msg and "TOML syntax error" in msg and "line 3" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    msg = error_of(path)
    assert str(path) in msg and "does not exist" in msg


# --------------------------------------------------------------------------- builders


def test_build_model_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = MINIMAL + "[model.train]\nepochs = 1\n[search]\nbudget = 5\n"
    cfg = load_study_config(write(tmp_path, text, "b.toml"))
    data = build_data(cfg)
    model, meta = build_model(cfg, progress=False, data=data)
    assert (tmp_path / "studies/checkpoints/b.safetensors").is_file()
    assert meta["architecture"]["name"] == "resnet20" and meta["recipe"] == "stochastic-depth"
    again, meta2 = build_model(cfg, progress=False, data=data)
    assert meta2["weights_fingerprint"] == meta["weights_fingerprint"]

    ev = build_evaluator(cfg, again, data, meta2)
    assert ev.model_fingerprint == meta["weights_fingerprint"]
    assert ev.cache is not None and ev.cache.url == cfg.storage_url

    # another architecture named in the study than in the checkpoint
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="resnet32"))
    with pytest.raises(ConfigError, match="resnet32.*holds 'resnet20'"):
        build_model(other, progress=False, data=data)


def test_build_model_refuses_to_train_when_asked_not_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_study_config(write(tmp_path, MINIMAL + "[model.train]\nepochs = 1\n"))
    with pytest.raises(ConfigError, match="model.checkpoint.*does not exist"):
        build_model(cfg, train_if_missing=False, progress=False)
