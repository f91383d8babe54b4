"""Checkpoints: safetensors weights + JSON metadata (paretoskip.checkpoint)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

import paretoskip
from paretoskip.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    weights_fingerprint,
)
from paretoskip.errors import CheckpointError, ConfigError

R20 = {"num_classes": 10, "in_channels": 1, "input_size": 8}


def _trained_like(name: str, shape, **kwargs) -> nn.Module:
    """A model whose batch-norm statistics and counters moved away from their defaults."""
    torch.manual_seed(0)
    model = paretoskip.create_model(name, **kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, *shape))
    return model.eval()


@pytest.fixture(scope="module")
def r20():
    return _trained_like("resnet20", (1, 8, 8), **R20)


@pytest.fixture
def saved(r20, tmp_path):
    path = save_checkpoint(
        r20, tmp_path / "r20", metadata={"recipe": "stochastic-depth", "epochs": 3}
    )
    return path


def test_round_trip_resnet20(r20, tmp_path):
    meta_in = {
        "recipe": "stochastic-depth",
        "dataset": {"name": "digits", "fingerprint": "abc"},
        "epochs": 30,
        "val_accuracy": 0.98,
        "test_accuracy": float("nan"),
    }
    path = save_checkpoint(r20, tmp_path / "ckpt" / "r20", metadata=meta_in)
    assert path == tmp_path / "ckpt" / "r20.safetensors"
    assert path.exists() and (tmp_path / "ckpt" / "r20.json").exists()

    model, meta = load_checkpoint(tmp_path / "ckpt" / "r20")
    assert not model.training
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), r20(x))
    sd_in, sd_out = r20.state_dict(), model.state_dict()
    assert sd_in.keys() == sd_out.keys()
    for k in sd_in:
        assert torch.equal(sd_in[k], sd_out[k]), k
    tracked = [k for k in sd_out if k.endswith("num_batches_tracked")]
    assert tracked and all(int(sd_out[k]) == 2 for k in tracked)

    assert meta["recipe"] == "stochastic-depth" and meta["epochs"] == 30
    assert meta["dataset"] == {"name": "digits", "fingerprint": "abc"}
    assert meta["val_accuracy"] == 0.98 and meta["test_accuracy"] == "nan"
    assert meta["architecture"] == {"name": "resnet20", "kwargs": R20}
    assert meta["weights_fingerprint"] == weights_fingerprint(r20) == weights_fingerprint(model)
    assert meta["format_version"] == 1
    assert {"torch", "torchvision", "paretoskip", "python"} <= set(meta["versions"])
    assert read_metadata(path) == meta
    assert paretoskip.models.model_spec(model) == paretoskip.models.model_spec(r20)


def test_round_trip_torchvision_resnet18(tmp_path):
    kwargs = {"num_classes": 10, "input_size": 32, "p_last": 0.8}
    model_in = _trained_like("resnet18", (3, 32, 32), **kwargs)
    assert any(hasattr(m, "stochastic_depth") for m in model_in.modules())
    path = save_checkpoint(model_in, tmp_path / "r18.safetensors", metadata={"note": "tv"})
    model, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model_in(x))
    assert meta["note"] == "tv" and meta["architecture"]["name"] == "resnet18"
    # the rebuilt model keeps its stochastic depth and skip behaviour
    assert len(paretoskip.models.skippable_units(model)) == 8


def test_paths_accept_any_suffix(saved, tmp_path):
    base = tmp_path / "r20"
    assert checkpoint_paths(base) == (saved, tmp_path / "r20.json")
    assert checkpoint_paths(saved) == checkpoint_paths(tmp_path / "r20.json")
    for p in (base, saved, tmp_path / "r20.json", str(base)):
        assert load_checkpoint(p)[1]["epochs"] == 3
    dotted = save_checkpoint(paretoskip.create_model("resnet20", **R20), tmp_path / "model.v1")
    assert dotted.name == "model.v1.safetensors"


def test_loading_never_unpickles(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, _ = load_checkpoint(saved)
    assert isinstance(model, nn.Module)


def test_missing_files(saved, tmp_path):
    with pytest.raises(CheckpointError, match="nothing.json"):
        load_checkpoint(tmp_path / "nothing")
    saved.unlink()
    with pytest.raises(CheckpointError, match="r20.safetensors"):
        load_checkpoint(saved)


@pytest.mark.parametrize("keep", [0.5, 0.999, 10])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(CheckpointError, match="r20.safetensors"):
        load_checkpoint(saved)


@pytest.mark.parametrize("where", ["tensor data", "last byte", "header"])
def test_corrupted_bytes(saved, where):
    data = bytearray(saved.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    pos = {
        "tensor data": (8 + header_len + len(data)) // 2,
        "last byte": len(data) - 1,
        "header": 20,
    }[where]
    data[pos] ^= 0x5A
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="r20.safetensors"):
        load_checkpoint(saved)


def test_corrupted_json(saved, tmp_path):
    json_path = tmp_path / "r20.json"
    text = json_path.read_text()
    json_path.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="r20.json"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="r20.json"):
        read_metadata(saved)


@pytest.mark.parametrize(
    "architecture",
    [
        {"name": "resnet32", "kwargs": R20},  # other blocks: keys differ
        {"name": "resnet20", "kwargs": {**R20, "num_classes": 100}},  # shapes differ
        {"name": "resnet20", "kwargs": {**R20, "p_last": 1.0}},  # same tensors, other model
        {"name": "resnet18", "kwargs": {"num_classes": 10}},
        {"name": "no-such-net", "kwargs": {}},
    ],
)
def test_json_with_another_architecture(saved, tmp_path, architecture):
    json_path = tmp_path / "r20.json"
    doc = json.loads(json_path.read_text())
    doc["architecture"] = architecture
    json_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="r20"):
        load_checkpoint(saved)


def test_weights_of_another_checkpoint(r20, tmp_path):
    save_checkpoint(r20, tmp_path / "a")
    other = paretoskip.create_model("resnet20", **R20)
    save_checkpoint(other, tmp_path / "b")
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="a.safetensors"):
        load_checkpoint(tmp_path / "a")


def test_fingerprint_is_deterministic_and_sensitive():
    torch.manual_seed(1)
    a = paretoskip.create_model("resnet20", **R20)
    torch.manual_seed(1)
    b = paretoskip.create_model("resnet20", **R20)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert len(weights_fingerprint(a)) == 64
    with torch.no_grad():
        b.fc.bias[0] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)
    torch.manual_seed(1)
    c = paretoskip.create_model("resnet20", **{**R20, "p_last": 1.0})  # same tensors
    assert weights_fingerprint(a) != weights_fingerprint(c)
    a.layer1[0].bn1.num_batches_tracked += 1
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_save_rejects_bad_input(r20, tmp_path):
    with pytest.raises(ConfigError):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "lin")
    with pytest.raises(ConfigError):
        save_checkpoint(r20, tmp_path / "x", metadata={"architecture": "mine"})
    with pytest.raises(ConfigError):
        save_checkpoint(r20, tmp_path / "y", metadata={"obj": object()})


def test_foreign_safetensors_with_other_tensors(saved):
    """A weights file without paretoskip's header is still checked tensor by tensor."""
    from safetensors.torch import save_file

    r32 = paretoskip.create_model("resnet32", **R20)
    save_file({k: v.contiguous() for k, v in r32.state_dict().items()}, str(saved))
    with pytest.raises(CheckpointError, match="do not fit the architecture resnet20"):
        load_checkpoint(saved)
