"""Training recipes (paretoskip.train)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paretoskip
from paretoskip.checkpoint import load_checkpoint, read_metadata, weights_fingerprint
from paretoskip.data import Split, load_dataset
from paretoskip.errors import ConfigError
from paretoskip.train import RECIPES, augment_batch, evaluate_accuracy, train_and_save, train_model


@pytest.fixture(autouse=True)
def one_thread():
    """The test machines are small and shared; one thread avoids OpenMP contention."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def small_digits():
    return load_dataset("digits", seed=0, limit=400)


def test_digits_stochastic_depth_reaches_95_percent(digits):
    result = train_model("resnet20", digits, recipe="stochastic-depth", epochs=20, progress=False)
    assert result.test_accuracy >= 0.95, result.history[-1]
    assert result.val_accuracy == result.history[-1]["val_accuracy"]
    assert result.epochs == 20 and len(result.history) == 20
    assert [h["epoch"] for h in result.history] == list(range(1, 21))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.seconds > 0 and not result.model.training
    assert paretoskip.models.model_spec(result.model)["kwargs"]["p_last"] == 0.5
    assert evaluate_accuracy(result.model, digits.test) == result.test_accuracy


def test_same_seed_same_weights(small_digits):
    rng_before = torch.get_rng_state()
    a = train_model("resnet20", small_digits, epochs=1, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    b = train_model("resnet20", small_digits, epochs=1, seed=7, progress=False)
    c = train_model("resnet20", small_digits, epochs=1, seed=8, progress=False)
    assert weights_fingerprint(a.model) == weights_fingerprint(b.model)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert weights_fingerprint(a.model) != weights_fingerprint(c.model)


def test_recipes(small_digits):
    plain = train_model(
        "resnet20", small_digits, recipe="plain", epochs=1, progress=False, p_last=0.3
    )
    assert plain.settings["p_last"] == 1.0
    assert paretoskip.models.model_spec(plain.model)["kwargs"]["p_last"] == 1.0
    sd = train_model(
        "resnet20",
        small_digits,
        epochs=1,
        progress=False,
        p_last=0.8,
        augment=False,
        model_kwargs={"shortcut": "B"},
    )
    spec = paretoskip.models.model_spec(sd.model)
    assert spec["kwargs"] == {
        "shortcut": "B",
        "num_classes": 10,
        "in_channels": 1,
        "input_size": 8,
        "p_last": 0.8,
    }
    assert sd.settings["augment"] is None
    with pytest.raises(ConfigError) as err:
        train_model("resnet20", small_digits, recipe="dropout", epochs=1, progress=False)
    for recipe in RECIPES:
        assert recipe in str(err.value)


def test_bad_settings(small_digits):
    with pytest.raises(ConfigError):
        train_model("resnet20", small_digits, model_kwargs={"num_classes": 3}, progress=False)
    with pytest.raises(ConfigError):
        train_model("resnet20", small_digits, model_kwargs={"p_last": 0.2}, progress=False)
    with pytest.raises(ConfigError):
        train_model("resnet20", small_digits, epochs=-1, progress=False)
    with pytest.raises(ConfigError):
        train_model("resnet20", small_digits, batch_size=0, progress=False)
    with pytest.raises(ConfigError):
        train_model("no-such-net", small_digits, epochs=1, progress=False)


def test_progress_bar_and_torchvision_model(small_digits, capsys):
    result = train_model("resnet18", small_digits, epochs=1, batch_size=64, progress=True)
    assert 0.0 <= result.test_accuracy <= 1.0
    err = capsys.readouterr().err
    assert "resnet18 digits" in err and "loss=" in err


def test_train_and_save(small_digits, tmp_path):
    result = train_and_save(
        "resnet20", small_digits, tmp_path / "r20", epochs=2, progress=False, seed=1
    )
    assert result.checkpoint == str(tmp_path / "r20.safetensors")
    meta = read_metadata(tmp_path / "r20")
    assert meta["recipe"] == "stochastic-depth" and meta["epochs"] == 2
    assert meta["dataset_fingerprint"] == small_digits.fingerprint
    assert meta["dataset"]["name"] == "digits"
    assert meta["test_accuracy"] == result.test_accuracy
    assert meta["val_accuracy"] == result.val_accuracy
    assert meta["training"]["seed"] == 1 and len(meta["history"]) == 2
    assert {"torch", "torchvision", "paretoskip", "python"} <= set(meta["versions"])
    model, _ = load_checkpoint(tmp_path / "r20")
    assert evaluate_accuracy(model, small_digits.test) == result.test_accuracy


def test_evaluate_accuracy(small_digits):
    model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    model.train()
    acc = evaluate_accuracy(model, small_digits.val, batch_size=7)
    assert 0.0 <= acc <= 1.0 and model.training
    empty = Split(small_digits.val.x[:0], small_digits.val.y[:0], np.empty(0, dtype=np.int64))
    assert np.isnan(evaluate_accuracy(model, empty))


@pytest.mark.parametrize("flip", [False, True])
def test_augment_batch_is_a_shifted_crop(flip):
    x = torch.arange(4 * 2 * 6 * 6, dtype=torch.float32).reshape(4, 2, 6, 6) + 1
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, 2, flip, gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(4):
        candidates = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        if flip:
            candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert torch.equal(augment_batch(x, 0, False, gen), x)
