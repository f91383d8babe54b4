"""The front file: written files validate against the published JSON Schema, and paretoskip's
own reader (shared by Front and AdaptiveModel) accepts and refuses what the schema does."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest

import paretoskip
from paretoskip.errors import ConfigError
from paretoskip.front import Front
from paretoskip.frontfile import load_front, schema, validate_front
from paretoskip.runtime import AdaptiveModel


@pytest.fixture(scope="module")
def written(digits, tmp_path_factory):
    """A front file as `search` + `Front.save` write it (a small search, constraints on)."""
    from conftest import make_tiny_model

    model = make_tiny_model()
    ev = paretoskip.Evaluator(model, digits)
    front = paretoskip.search(
        ev,
        budget=12,
        storage=":memory:",
        constraints=["accuracy >= 0.01"],
        engine="pymoo-nsga2",
        engine_options={"pop_size": 4},
        progress=False,
    )
    path, _ = front.save(tmp_path_factory.mktemp("front") / "f.json")
    return model, json.loads(path.read_text()), path


def _validator():
    return jsonschema.Draft202012Validator(schema())


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(schema())


def test_written_file_validates_against_the_schema(written):
    _, doc, path = written
    errors = sorted(_validator().iter_errors(doc), key=str)
    assert not errors, [e.message for e in errors]
    assert validate_front(doc) is doc
    assert load_front(path) == doc


def test_schema_documents_every_key_written(written):
    """Every key the writer puts in the file is a property of the schema."""
    _, doc, _ = written
    root = schema()
    props = root["properties"]
    assert set(doc) <= set(props)
    assert set(doc["study"]) <= set(props["study"]["properties"])
    assert set(doc["reference"]) <= set(props["reference"]["properties"])
    assert set(doc["hypervolume"]) <= set(props["hypervolume"]["properties"])
    member = root["$defs"]["member"]["properties"]
    metric = root["$defs"]["metric"]["properties"]
    for m in doc["members"]:
        assert set(m) <= set(member)
        for entry in m["metrics"].values():
            assert set(entry) <= set(metric)


def _broken(doc):
    """(what was broken, document) pairs; each violates the schema."""
    out = []
    for path in (("schema_version",), ("space", "units"), ("reference",), ("members", 0, "mask")):
        d = copy.deepcopy(doc)
        node = d
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
        out.append(("missing " + ".".join(map(str, path)), d))
    d = copy.deepcopy(doc)
    d["schema_version"] = 2
    out.append(("version", d))
    d = copy.deepcopy(doc)
    d["objectives"][0]["direction"] = "up"
    out.append(("direction", d))
    d = copy.deepcopy(doc)
    d["members"] = []
    out.append(("no members", d))
    d = copy.deepcopy(doc)
    d["members"][0]["strict"] = "yes"
    out.append(("strict not a boolean", d))
    d = copy.deepcopy(doc)
    d["members"][0]["metrics"]["flops"]["value"] = "many"
    out.append(("value not a number", d))
    d = copy.deepcopy(doc)
    d["hypervolume"]["value"] = None
    out.append(("hypervolume null", d))
    return out


def test_reader_and_schema_agree(written):
    _, doc, _ = written
    for what, bad in _broken(doc):
        assert list(_validator().iter_errors(bad)), f"the schema accepts: {what}"
        with pytest.raises(ConfigError):
            validate_front(bad, "x.json")


def test_front_and_runtime_read_through_the_same_reader(written, tmp_path):
    model, doc, _ = written
    bad = copy.deepcopy(doc)
    del bad["members"][1]["metrics"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as a:
        Front.load(path)
    with pytest.raises(ConfigError) as b:
        AdaptiveModel(model, path)
    assert str(a.value) == str(b.value)
    assert "'members[1].metrics'" in str(a.value) and "broken.json" in str(a.value)
    # a minimal document (what choosing a member needs) is a valid front for both
    minimal = {k: doc[k] for k in ("schema_version", "space", "objectives", "reference")}
    minimal["members"] = [{"mask": m["mask"], "metrics": m["metrics"]} for m in doc["members"]]
    assert not list(_validator().iter_errors(minimal))
    path.write_text(json.dumps(minimal))
    assert len(Front.load(path)) == len(AdaptiveModel(model, path).members)
    assert "test acc" in Front.load(path).table()


def _family(name="layer-gated", kind="dynamic"):
    from paretoskip.dynamic import dynamic_family

    points = [
        {
            "target": t,
            "val": {"accuracy": a, "n": 100, "flops": {"mean": f, "std": f / 10}},
            "test": {"accuracy": a - 0.01, "flops": {"mean": f, "std": f / 10}},
        }
        for t, a, f in [(0.5, 0.80, 2.0e6), (0.7, 0.86, 3.0e6), (0.9, 0.85, 3.5e6)]
    ]
    return dynamic_family(points, name=name, label="layer gates", kind=kind)


def test_front_file_carries_families(written, tmp_path):
    """Families of operating points beside the static members survive save and load."""
    _, doc, path = written
    front = Front.load(path)
    assert front.families == []
    front.add_family(_family())
    front.add_family(_family("dual", kind="dual"))
    front.add_family(_family())  # the same name replaces the family, in its place
    assert [f["name"] for f in front.families] == ["layer-gated", "dual"]
    out, _ = front.save(tmp_path / "with-families.json")
    raw = json.loads(out.read_text())
    errors = sorted(_validator().iter_errors(raw), key=str)
    assert not errors, [e.message for e in errors]
    again = Front.load(out)
    assert again.families == front.families
    gated = again.families[0]
    assert gated["cost_basis"] == "mean_per_input"
    assert [m["strict"] for m in gated["members"]] == [True, True, False]
    assert gated["members"][0]["metrics"]["flops"]["value"] == 2.0e6
    assert gated["members"][0]["test_accuracy"] == pytest.approx(0.79)
    assert again.members == Front.load(path).members  # the static front is untouched


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.pop("name"), r"missing required key 'families\[0\]\.name'"),
        (lambda f: f.update(kind="magic"), r"families\[0\]\.kind is 'magic'; accepted: 'static'"),
        (lambda f: f["members"].clear(), r"'families\[0\]\.members' is empty"),
        (lambda f: f["members"][0].pop("metrics"), r"'families\[0\]\.members\[0\]\.metrics'"),
        (
            lambda f: f["members"][0]["metrics"].update(flops={"value": "many"}),
            r"members\[0\]\.metrics\.flops\.value' must be a number or null",
        ),
    ],
)
def test_bad_families_are_refused(written, change, message):
    _, doc, path = written
    family = _family()
    change(family)
    front = Front.load(path)
    with pytest.raises(ConfigError, match=message):
        front.add_family(family)
    assert front.families == []
    bad = {**copy.deepcopy(doc), "families": [family]}
    with pytest.raises(ConfigError, match=message):
        validate_front(bad, "x.json")


def test_two_families_of_one_name_are_refused(written):
    _, doc, _ = written
    bad = {**copy.deepcopy(doc), "families": [_family(), _family()]}
    with pytest.raises(ConfigError, match=r"front x.json: families \['layer-gated'\] appear more"):
        validate_front(bad, "x.json")


def test_near_pareto_matches_the_definition_with_ties_and_nans():
    from paretoskip.front import _minimised, near_pareto
    from paretoskip.metrics import parse_objectives

    objectives = parse_objectives(["accuracy", "flops", "latency"])
    rng = np.random.default_rng(0)
    values = np.round(rng.random((3000, 3)), 1)  # coarse: many ties with the front
    values[rng.random(3000) < 0.02, 2] = np.nan
    eps = np.where(rng.random((3000, 1)) < 0.5, 0.0, 0.05) * np.ones((1, 3))
    y = _minimised(values, objectives)
    ok = ~np.isnan(y).any(axis=1)
    strict = np.zeros(3000, dtype=bool)
    for i in np.flatnonzero(ok):  # non-dominated among the finite rows, by the definition
        others = y[ok]
        strict[i] = not np.any(np.all(others <= y[i], axis=1) & np.any(others < y[i], axis=1))
    band = near_pareto(values, eps, objectives, strict)
    shifted = y - np.abs(eps)
    front = y[strict]
    for i in range(3000):
        dominated = np.any(np.all(front <= shifted[i], axis=1) & np.any(front < shifted[i], axis=1))
        assert band[i] == (not strict[i] and not dominated), i
    assert 0 < band.sum() < (~strict).sum()
