"""The front file: written files validate against the published JSON Schema, and paretoskip's
own reader (shared by Front and AdaptiveModel) accepts and refuses what the schema does."""

from __future__ import annotations

import copy
import json

import jsonschema
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
