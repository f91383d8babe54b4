"""Training gates (paretoskip.dynamic.train_gates): targets, frozen backbone, resuming."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import make_tiny_model

from paretoskip.checkpoint import save_checkpoint
from paretoskip.data import load_dataset
from paretoskip.dynamic import gated_fingerprint, load_gated, train_gates, train_gates_and_save
from paretoskip.errors import ConfigError
from paretoskip.train import read_state, state_path_for


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def small_digits():
    return load_dataset("digits", seed=0, limit=600)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_gates_train_towards_the_target_on_a_frozen_backbone(small_digits):
    backbone = make_tiny_model()
    before = _state(backbone)
    result = train_gates(
        backbone, small_digits, mode="layer", target=0.45, epochs=6, lr=0.2, progress=False
    )
    frac = result.val.flops_mean / result.val.full_flops
    assert frac < 0.8, f"the gates did not reduce the cost (mean fraction {frac:.3f})"
    assert result.val.distinct_configurations >= 1 and result.test.n == len(small_digits.test)
    # the caller's backbone is untouched, and so is the gated copy's (frozen, eval-mode BN)
    after = result.model.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(backbone.state_dict()[k], v), k
        assert torch.equal(after[k], v), k
    assert [h["epoch"] for h in result.history] == list(range(1, 7))
    assert {"loss_ce", "loss_flops_fraction", "val_accuracy"} <= set(result.history[-1])
    assert result.settings["finetune"] is False


def test_finetuning_trains_the_backbone_but_keeps_its_batch_norm_statistics(small_digits):
    backbone = make_tiny_model()
    before = _state(backbone)
    result = train_gates(
        backbone, small_digits, mode="lc", target=0.6, epochs=1, finetune=True, progress=False
    )
    after = result.model.backbone.state_dict()
    assert not torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    for k in before:
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(after[k], before[k]), k


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"target": 0.0}, ["target=0.0", "(0, 1]"]),
        ({"target": 1.5}, ["target=1.5", "1]"]),
        ({"target": "half"}, ["target='half'"]),
        ({"target": 0.001}, ["target=0.001", "is not accepted", "every unit"]),
        ({"cost_weight": -1}, ["cost_weight=-1"]),
        ({"temperature": 0}, ["temperature=0"]),
        ({"finetune": "yes"}, ["finetune='yes'"]),
        ({"epochs": -1}, ["epochs=-1"]),
    ],
)
def test_bad_targets_are_refused(small_digits, kwargs, words):
    with pytest.raises(ConfigError) as err:
        train_gates(make_tiny_model(), small_digits, progress=False, **kwargs)
    for w in words:
        assert w in str(err.value)


def test_gates_need_the_backbones_data():
    fashion_like = load_dataset("digits", seed=0, limit=200, input_size=16)
    with pytest.raises(ConfigError, match=r"inputs of shape \(1, 8, 8\)"):
        train_gates(make_tiny_model(), fashion_like, progress=False)


# --------------------------------------------------------------------------- resuming

_SCRIPT = """
import sys
from paretoskip.checkpoint import load_checkpoint
from paretoskip.data import load_dataset
from paretoskip.dynamic import train_gates_and_save
data = load_dataset("digits", seed=0, limit=600)
backbone, _ = load_checkpoint(sys.argv[1])
train_gates_and_save(backbone, data, sys.argv[2], **KWARGS)
"""
_KWARGS = dict(
    mode="lc", gate="block", target=0.5, epochs=5, seed=3, threads=1, progress=False, lr=0.1
)


def _run_killed(backbone_path, out, fraction_of_an_epoch: float) -> int:
    script = _SCRIPT.replace("KWARGS", repr(_KWARGS))
    proc = subprocess.Popen([sys.executable, "-c", script, str(backbone_path), str(out)])
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
def test_gate_training_killed_and_resumed_gives_the_same_gates(tmp_path, small_digits, delay):
    backbone_path = tmp_path / "backbone"
    save_checkpoint(make_tiny_model(), backbone_path)
    from paretoskip.checkpoint import load_checkpoint

    backbone, _ = load_checkpoint(backbone_path)
    straight = train_gates_and_save(backbone, small_digits, tmp_path / "straight", **_KWARGS)

    out = tmp_path / "killed"
    assert _run_killed(backbone_path, out, delay) == -9
    state = state_path_for(out)
    assert state.exists(), "the killed run saved no training state"
    done = read_state(state).epoch
    assert 1 <= done < 5
    resumed = train_gates_and_save(backbone, small_digits, out, **_KWARGS)
    assert resumed.resumed_from == done
    assert not state.exists()
    a, meta_a = load_gated(tmp_path / "straight")
    b, meta_b = load_gated(out)
    assert gated_fingerprint(a) == gated_fingerprint(b) == gated_fingerprint(straight.model)
    assert meta_a["weights_fingerprint"] == meta_b["weights_fingerprint"]
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(meta_a["history"]) == strip(meta_b["history"])
    assert meta_b["resumed_from_epoch"] == done and meta_b["target"] == 0.5
    # the same gates make the same decisions
    x = small_digits.test.x
    assert torch.equal(a.run(x).skipped, b.run(x).skipped)


def test_resuming_with_another_target_is_refused(tmp_path, small_digits):
    from paretoskip.errors import CheckpointError

    state = tmp_path / "g.train-state.safetensors"
    kw = dict(mode="layer", epochs=1, progress=False, state_path=state)
    train_gates(make_tiny_model(), small_digits, target=0.5, **kw)
    with pytest.raises(CheckpointError, match="target"):
        train_gates(make_tiny_model(), small_digits, target=0.6, **kw)


# --------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
def test_dynamic_benchmark_quick_end_to_end(tmp_path):
    """benchmarks/dynamic.py --quick with the smallest settings: every part runs and the JSON
    holds what the report needs (about a minute on an idle machine)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "dynamic.py"
    spec = importlib.util.spec_from_file_location("dynamic_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, fig = tmp_path / "d.json", tmp_path / "d.png"
    bench.main(
        [
            "--quick",
            "--work", str(tmp_path / "work"),
            "--out", str(out),
            "--plot", str(fig),
            "--modes", "layer",
            "--targets", "0.6",
            "--epochs", "2",
            "--dual-mode", "layer",
            "--budgets", "0.5",
            "--threads", "1",
        ]
    )  # fmt: skip
    doc = json.loads(out.read_text())
    assert fig.exists() and fig.with_suffix(".pdf").exists()
    names = [f["name"] for f in doc["families"]]
    assert names == ["layer-gated", "layer-policy-gated", "dual"]
    assert all(f["cost_basis"] == "mean_per_input" for f in doc["families"])
    dual = doc["families"][-1]["members"][0]
    assert dual["test_flops"]["max"] <= dual["budget"]
    rows = doc["matched"]
    assert {"1", "64"} <= set(rows[0]["latency"]) and rows[0]["latency"]["1"]["ratio_to_full"] > 0
    assert len(doc["summary"]) == len(rows) and doc["static"]["masks_evaluated"] == 512
    # the exhaustive static evaluation equals evaluating each mask on its own
    from paretoskip.checkpoint import load_checkpoint
    from paretoskip.data import load_dataset

    backbone, _ = load_checkpoint(tmp_path / "work" / "digits-resnet20")
    data = load_dataset("digits", seed=0)
    for m in doc["static"]["members"][:4]:
        assert bench.accuracy_of(backbone, m["mask"], data.val) == pytest.approx(m["val_accuracy"])
