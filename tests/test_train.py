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


# --------------------------------------------------------------------------- recipes, resuming

_RESUME_SCRIPT = """
import sys
from paretoskip.data import load_dataset
from paretoskip.train import train_and_save
data = load_dataset("digits", seed=0, limit=1200)
train_and_save("resnet20", data, sys.argv[1], epochs=6, seed=5, threads=1, progress=False,
               nesterov=True, label_smoothing=0.1, warmup_epochs=1)
"""
_RESUME_KWARGS = dict(
    epochs=6,
    seed=5,
    threads=1,
    progress=False,
    nesterov=True,
    label_smoothing=0.1,
    warmup_epochs=1,
)


def _run_killed(out, fraction_of_an_epoch: float) -> int:
    """Start a training subprocess; SIGKILL it ``fraction_of_an_epoch`` into its third epoch
    (0: as soon as a state is saved)."""
    import signal
    import subprocess
    import sys
    import time

    from paretoskip.train import read_state, state_path_for

    proc = subprocess.Popen([sys.executable, "-c", _RESUME_SCRIPT, str(out)])
    state = state_path_for(out)

    def epoch() -> int:
        try:
            return read_state(state).epoch
        except Exception:  # noqa: BLE001 - not written yet
            return 0

    deadline = time.monotonic() + 300
    try:
        while epoch() < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if fraction_of_an_epoch > 0:
            t1 = time.monotonic()
            while epoch() < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(fraction_of_an_epoch * (time.monotonic() - t1))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_training_killed_and_resumed_ends_with_the_same_weights(tmp_path, delay):
    from paretoskip.train import read_state, state_path_for

    small = load_dataset("digits", seed=0, limit=1200)
    kwargs = _RESUME_KWARGS
    straight = train_and_save("resnet20", small, tmp_path / "straight", **kwargs)

    out = tmp_path / "killed"
    assert _run_killed(out, delay) == -9
    state = state_path_for(out)
    assert state.exists(), "the killed run saved no training state"
    done = read_state(state).epoch
    assert 1 <= done < 6
    resumed = train_and_save("resnet20", small, out, **kwargs)
    assert resumed.resumed_from == done
    assert not state.exists()  # removed once the checkpoint is written
    a, meta_a = load_checkpoint(tmp_path / "straight")
    b, meta_b = load_checkpoint(out)
    assert meta_a["weights_fingerprint"] == meta_b["weights_fingerprint"]
    assert weights_fingerprint(a) == weights_fingerprint(b) == weights_fingerprint(straight.model)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(meta_a["history"]) == strip(meta_b["history"])
    assert meta_b["training_cost"]["resumed_from_epoch"] == done
    assert meta_b["reproducibility"]["threads"] == 1


def test_resuming_with_other_settings_is_refused(tmp_path):
    from paretoskip.errors import CheckpointError
    from paretoskip.train import state_path_for

    small = load_dataset("digits", seed=0, limit=300)
    state = tmp_path / "r.train-state.safetensors"
    train_model("resnet20", small, epochs=1, progress=False, state_path=state)
    assert state.exists()
    with pytest.raises(CheckpointError) as err:
        train_model("resnet20", small, epochs=1, lr=0.05, progress=False, state_path=state)
    assert "lr 0.1 → 0.05" in str(err.value) and "delete it" in str(err.value)
    # the same settings resume at the end: nothing left to do, same weights
    again = train_model("resnet20", small, epochs=1, progress=False, state_path=state)
    assert again.resumed_from == 1
    state.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train_model("resnet20", small, epochs=1, progress=False, state_path=state)
    assert state_path_for(tmp_path / "x.safetensors") == tmp_path / "x.train-state.safetensors"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov=True needs momentum > 0"),
        ({"warmup_epochs": 3, "epochs": 3}, "warmup_epochs=3 leaves no epoch"),
        ({"warmup_epochs": -1}, "warmup_epochs=-1"),
        ({"threads": 0}, "threads=0"),
        ({"momentum": 1.5}, "momentum=1.5"),
        ({"hflip": "yes"}, "hflip='yes'"),
        ({"recipe_options": {"alpha": 0.5}}, "does not take ['alpha']"),
        ({"p_last": 1.5}, "p_last=1.5"),
    ],
)
def test_recipe_options_are_checked(small_digits, kwargs, words):
    with pytest.raises(ConfigError) as err:
        train_model("resnet20", small_digits, progress=False, **{"epochs": 1, **kwargs})
    assert words in str(err.value)


def test_registering_a_recipe_twice_is_refused():
    from paretoskip.train import Recipe, get_recipe, register_recipe

    class Again(Recipe):
        name = "plain"

    with pytest.raises(ConfigError, match="already registered"):
        register_recipe(Again())
    assert type(get_recipe("plain")).__name__ == "Plain"


def test_nesterov_label_smoothing_and_flips_are_recorded(small_digits, tmp_path):
    result = train_and_save(
        "resnet20",
        small_digits,
        tmp_path / "r",
        epochs=1,
        progress=False,
        nesterov=True,
        label_smoothing=0.1,
        hflip=True,
        warmup_epochs=0.5,
        threads=1,
    )
    meta = read_metadata(tmp_path / "r")
    t = meta["training"]
    assert t["nesterov"] is True and t["label_smoothing"] == 0.1
    assert t["augment"] == {"random_crop_pad": 1, "hflip": True}
    assert t["threads"] == 1 and t["passes_per_step"] == 1
    assert meta["reproducibility"]["seed"] == 0
    assert result.settings["schedule"].startswith(
        f"linear warm-up {result.settings['steps_per_epoch'] // 2} steps"
    )


def test_step_schedule_of_the_original_papers():
    from paretoskip.train import TrainSettings

    s = TrainSettings(epochs=10, schedule="step", milestones=[5, 8], gamma=0.1, warmup_epochs=0)
    factors = [s.lr_factor(i, steps_per_epoch=2) for i in range(20)]
    assert factors[:10] == [1.0] * 10
    assert factors[10:16] == pytest.approx([0.1] * 6) and factors[16:] == pytest.approx([0.01] * 4)
    with pytest.raises(ConfigError, match="needs epochs > 0"):
        TrainSettings(schedule="step")
    with pytest.raises(ConfigError, match="belong to schedule='step'"):
        TrainSettings(milestones=[3])
    with pytest.raises(ConfigError, match="accepted: 'cosine', 'step'"):
        TrainSettings(schedule="linear")
