"""`paretoskip export`: the format comes from --format or the suffix of --out (a contradiction
is refused), and every format's file computes what the masked model computes."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from paretoskip.cli import main

STUDY = """\
[study]
name = "tinyx"
seed = 0

[model]
name = "resnet20"

[model.train]
epochs = 1

[data]
name = "digits"

[search]
engine = "random"
budget = 8
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A directory where `paretoskip search tinyx.toml` ran once (trains one epoch)."""
    work = tmp_path_factory.mktemp("cli-export")
    (work / "tinyx.toml").write_text(STUDY)
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        assert main(["search", "tinyx.toml", "-q"]) == 0
    finally:
        mp.undo()
    return work


@pytest.fixture
def here(study_dir, monkeypatch):
    monkeypatch.chdir(study_dir)
    return study_dir


def _cheapest(work):
    doc = json.loads((work / "studies/tinyx.front.json").read_text())
    i = len(doc["members"]) - 1
    return i, doc["members"][i], doc


def _masked_model(work, mask):
    from paretoskip.checkpoint import load_checkpoint
    from paretoskip.models import apply_mask

    model, _ = load_checkpoint(work / "studies/checkpoints/tinyx")
    apply_mask(model.eval(), mask)
    return model


def _check_against_model(path, work, mask):
    from paretoskip.export import load_exported

    module = load_exported(path)
    model = _masked_model(work, mask)
    for batch in (1, 5):
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            want = model(x)
        got = torch.as_tensor(module(x))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime absent")
def test_export_onnx_by_suffix(here, capsys):
    i, member, doc = _cheapest(here)
    out = here / "exports" / f"m{i}.onnx"
    assert main(["export", "tinyx.toml", "--member", str(i), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(onnx," in printed and "(= the front's)" in printed and "batch 8" in printed
    import onnx

    proto = onnx.load(str(out))  # a real ONNX file, not a torch.export archive
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["paretoskip.mask"] == member["mask"]
    side = json.loads((here / "exports" / f"m{i}.onnx.json").read_text())
    assert side["mask"] == member["mask"] and side["export_format"] == "onnx"
    assert side["input"]["shape"] == ["batch", 1, 8, 8]
    assert side["input"]["normalization"]["mean"] == doc["provenance"]["dataset"]["mean"]
    assert side["member"]["metrics"]["flops"]["value"] == member["metrics"]["flops"]["value"]
    assert side["model"]["fingerprint"] == doc["provenance"]["model"]["fingerprint"]
    _check_against_model(out, here, member["mask"])


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime absent")
def test_export_format_flag_adds_the_suffix(here, capsys):
    _, member, _ = _cheapest(here)
    out = here / "exports" / "by-flag"
    code = main(
        ["export", "tinyx.toml", "--mask", member["mask"], "--out", str(out), "--format", "onnx"]
    )
    assert code == 0
    assert (here / "exports" / "by-flag.onnx").is_file()
    assert (here / "exports" / "by-flag.onnx.json").is_file()


def test_export_refuses_a_suffix_that_contradicts_the_format(here, capsys):
    out = here / "exports" / "wrong.onnx"
    code = main(
        ["export", "tinyx.toml", "--member", "0", "--out", str(out), "--format", "torch.export"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "'wrong.onnx'" in err or "wrong.onnx" in err
    assert "format 'onnx'" in err and "'.pt2'" in err
    assert not out.exists()


def test_export_refuses_an_unknown_suffix(here, capsys):
    code = main(["export", "tinyx.toml", "--member", "0", "--out", "model.bin"])
    err = capsys.readouterr().err
    assert code == 2 and "'.bin'" in err and ".onnx (onnx)" in err
    assert not (here / "model.bin").exists()


def test_export_static_batch_torch_export(here, capsys):
    from paretoskip.export import read_metadata

    _, member, _ = _cheapest(here)
    out = here / "exports" / "static.pt2"
    code = main(
        [
            "export",
            "tinyx.toml",
            "--mask",
            member["mask"],
            "--out",
            str(out),
            "--static-batch",
            "--batch-size",
            "4",
        ]
    )
    assert code == 0
    meta = read_metadata(out)
    assert meta["input"]["shape"] == [4, 1, 8, 8] and meta["input"]["batch"]["dynamic"] is False
    assert "batch 4" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("iree") is None
    or importlib.util.find_spec("iree.compiler") is None
    or importlib.util.find_spec("iree.runtime") is None,
    reason="the IREE wheels are absent: pip install 'paretoskip[iree]'",
)
def test_export_iree(here, capsys):
    i, member, _ = _cheapest(here)
    out = here / "exports" / f"m{i}.vmfb"
    assert main(["export", "tinyx.toml", "--member", str(i), "--out", str(out)]) == 0
    assert "(iree," in capsys.readouterr().out
    _check_against_model(out, here, member["mask"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accuracy", "1.5"], "--accuracy 1.5: accuracy is a fraction, give a bound in [0, 1]"),
        (["--accuracy", "95"], "(did you mean 0.95?)"),
        (["--accuracy", "-0.1"], "give a bound in [0, 1]"),
        (["--flops", "0"], "--flops 0: a cost bound must be > 0"),
        (["--flops=-5%"], "--flops -5%: a percentage of the full model must be > 0%"),
        (["--budget", "flops=-1"], "--flops -1: a cost bound must be > 0"),
    ],
)
def test_select_bounds_are_range_checked(here, capsys, args, message):
    code = main(["select", "studies/tinyx.front.json", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "no member" not in err


def test_select_in_range_bounds_still_select(here, capsys):
    assert main(["select", "studies/tinyx.front.json", "--accuracy", "0", "--flops", "100%"]) == 0
    assert "member" in capsys.readouterr().out
