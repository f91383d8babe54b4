"""Export: a standalone module or file without the skipped blocks, same outputs and FLOPs.

torch.export, TorchScript, ONNX (checked with onnxruntime) and IREE (compiled for llvm-cpu,
run with the IREE runtime), each at batch 1 and a larger batch from the same file.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import paretoskip
from paretoskip.checkpoint import weights_fingerprint
from paretoskip.errors import ConfigError, MaskError, ParetoSkipError
from paretoskip.export import (
    ExportCheckError,
    check_exported,
    export_configuration,
    export_file,
    load_exported,
    normalization_of,
    prune_skipped,
    read_metadata,
    resolve_format,
    save_exported,
    sidecar_path,
)
from paretoskip.models import apply_mask, get_mask, skippable_units

# TorchScript is deprecated in recent torch: its FutureWarnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

MODELS = {
    "resnet20": ("resnet20", {"num_classes": 10, "in_channels": 1, "input_size": 8}),
    "resnet20B": (
        "resnet20",
        {"num_classes": 10, "in_channels": 1, "input_size": 8, "shortcut": "B"},
    ),
    "resnet18": ("resnet18", {"num_classes": 10, "input_size": 32, "p_last": 0.5}),
}
# Shortcut children that a skipped unit keeps (the only parameters it may still own).
SHORTCUT_CHILDREN = ("shortcut", "downsample")


def make(key):
    name, kwargs = MODELS[key]
    torch.manual_seed(0)
    model = paretoskip.create_model(name, **kwargs).eval()
    # Non-trivial batch-norm statistics, so that a wrong path cannot match by accident.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def example(model, batch=3):
    return torch.randn(batch, *model.input_shape)


def masks_for(n):
    return [
        "0" * n,
        "1" + "0" * (n - 2) + "1",
        "01" * (n // 2) + "0" * (n % 2),
        "1" * (n - 1) + "0",  # all skipped but the last
        "0" + "1" * (n - 1),  # all skipped but the first
    ]


def masked(model, mask):
    m = copy.deepcopy(model).eval()
    apply_mask(m, mask)
    return m


def flops(module, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def exported_state_dict(exported):
    program = getattr(exported, "paretoskip_exported_program", None)
    return dict(program.state_dict) if program is not None else exported.state_dict()


def check_pruned_state_dict(model, mask, state):
    units = skippable_units(model)
    original = model.state_dict()
    skipped = [n for (n, _), b in zip(units, mask) if b == "1"]
    for key in original:
        owner = next((u for u in skipped if key.startswith(u + ".")), None)
        keep = owner is None or key[len(owner) + 1 :].split(".")[0] in SHORTCUT_CHILDREN
        assert (key in state) == keep, (key, keep)
        if keep:
            torch.testing.assert_close(state[key], original[key])
    return skipped


def branch_convs(unit):
    """Convolutions of a unit outside its shortcut path."""
    shortcut = [getattr(unit, c) for c in SHORTCUT_CHILDREN if getattr(unit, c, None) is not None]
    in_shortcut = {id(m) for s in shortcut for m in s.modules()}
    return sum(1 for m in unit.modules() if isinstance(m, nn.Conv2d) and id(m) not in in_shortcut)


def conv_nodes(graph_module):
    return sum(
        1 for n in graph_module.graph.nodes if n.op == "call_function" and "conv" in str(n.target)
    )


@pytest.mark.parametrize("key", list(MODELS))
def test_torch_export_matches_masked_model(key):
    model = make(key)
    n = len(skippable_units(model))
    x = example(model)
    for mask in masks_for(n):
        exported = export_configuration(model, mask, example_input=x)
        ref = masked(model, mask)
        y = torch.randn_like(x)  # not the tracing input
        with torch.no_grad():
            torch.testing.assert_close(exported(y), ref(y))
            torch.testing.assert_close(exported(x), ref(x))
            for batch in (1, 17):  # the batch dimension is dynamic
                z = torch.randn(batch, *model.input_shape)
                torch.testing.assert_close(exported(z), ref(z))
        # Exactly the masked model's work, and no skipped convolution in the graph.
        assert flops(exported, x) == flops(ref, x), mask
        n_convs = sum(1 for m in ref.modules() if isinstance(m, nn.Conv2d))
        skipped_convs = sum(
            branch_convs(u) for (_, u), b in zip(skippable_units(ref), mask) if b == "1"
        )
        assert conv_nodes(exported) == n_convs - skipped_convs, mask
        # The skipped blocks' weights are gone; everything else is kept unchanged.
        skipped = check_pruned_state_dict(model, mask, exported_state_dict(exported))
        assert exported.paretoskip_export["skipped"] == skipped
        assert exported.paretoskip_export["mask"] == mask


@pytest.mark.parametrize("key", ["resnet20B", "resnet18"])
def test_torchscript_matches_masked_model(key):
    model = make(key)
    n = len(skippable_units(model))
    x = example(model)
    for mask in masks_for(n)[1:4]:
        exported = export_configuration(model, mask, example_input=x, method="torchscript")
        assert isinstance(exported, torch.jit.ScriptModule)
        ref = masked(model, mask)
        with torch.no_grad():
            for batch in (1, 5):
                y = torch.randn(batch, *model.input_shape)
                torch.testing.assert_close(exported(y), ref(y))
        assert flops(exported, x) == flops(ref, x)
        check_pruned_state_dict(model, mask, exported.state_dict())


@pytest.mark.parametrize("method", ["torch.export", "torchscript"])
def test_save_load_round_trip(tmp_path, method):
    model = make("resnet20B")
    mask = "101000011"
    x = example(model)
    exported = export_configuration(model, mask, example_input=x, method=method)
    path = tmp_path / ("m.pt2" if method == "torch.export" else "m.pt")
    save_exported(exported, path)
    loaded = load_exported(path)
    y = torch.randn_like(x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), masked(model, mask)(y))
    assert loaded.paretoskip_export == exported.paretoskip_export
    assert loaded.paretoskip_export["skipped"] == ["layer1.0", "layer1.2", "layer3.1", "layer3.2"]
    check_pruned_state_dict(model, mask, exported_state_dict(loaded))


def test_round_trip_any_suffix_and_program(tmp_path):
    model = make("resnet20")
    exported = export_configuration(model, "0" * 8 + "1")
    save_exported(exported, tmp_path / "model.bin")  # format is read from the content
    assert load_exported(tmp_path / "model.bin").paretoskip_export["mask"] == "0" * 8 + "1"
    save_exported(exported.paretoskip_exported_program, tmp_path / "p.pt2")
    x = example(model, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "p.pt2")(x), exported(x))


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_exported(tmp_path / "nope.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="junk.pt2"):
        load_exported(junk)
    with pytest.raises(ConfigError, match="cannot save"):
        save_exported(nn.Linear(2, 2), tmp_path / "x.pt2")


def test_default_example_input_and_member_dict():
    model = make("resnet20")
    member = {"mask": "110000000", "metrics": {}}
    exported = export_configuration(model, member)  # example input from model.input_shape
    meta = exported.paretoskip_export
    assert meta["input"]["shape"] == ["batch", 1, 8, 8]
    assert meta["input"]["batch"] == {"dynamic": True, "min": 1}
    assert meta["member"] == {"metrics": {}}
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), masked(model, "110000000")(x))


def test_model_is_not_modified():
    model = make("resnet18").train()
    apply_mask(model, "00100000")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_configuration(model, "11000011", example_input=example(model, 2))
    assert model.training
    assert get_mask(model) == [0, 0, 1, 0, 0, 0, 0, 0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(hasattr(u, "conv1") for _, u in skippable_units(model))


def test_prune_skipped_keeps_only_shortcut_children():
    model = make("resnet18")
    pruned = prune_skipped(model, "10010000", example(model, 2))
    units = dict(skippable_units(pruned))
    assert [n for n, _ in units["layer1.0"].named_children()] == []  # identity shortcut
    assert [n for n, _ in units["layer2.1"].named_children()] == []
    assert [n for n, _ in units["layer2.0"].named_children()] != []  # not skipped
    pruned4 = prune_skipped(model, "00000010", example(model, 2))
    assert [n for n, _ in dict(skippable_units(pruned4))["layer4.0"].named_children()] == [
        "downsample"
    ]


def test_bad_method_and_masks():
    model = make("resnet20")
    with pytest.raises(
        ConfigError, match="unknown export method 'onnx'.*torch.export.*torchscript"
    ):
        export_configuration(model, "0" * 9, method="onnx")
    with pytest.raises(MaskError, match="9 skippable units"):
        export_configuration(model, "0" * 8)
    with pytest.raises(MaskError, match="only '0'"):
        export_configuration(model, "0" * 8 + "x")
    with pytest.raises(MaskError):
        export_configuration(model, [0] * 8 + [2])
    with pytest.raises(ConfigError, match="example_input"):
        export_configuration(nn.Sequential(model), "0" * 9)


# --------------------------------------------------------------------------- files and formats

HAVE_IREE = (
    all(importlib.util.find_spec(m) is not None for m in ("iree", "iree.compiler", "iree.runtime"))
    if importlib.util.find_spec("iree") is not None
    else False
)
NORM = ([0.25], [0.5])


def member_for(mask):
    return {
        "mask": mask,
        "metrics": {"accuracy": {"value": 0.9, "unit": "fraction", "spread": 0.01}},
        "test_accuracy": 0.88,
        "strict": True,
        "trial": 7,
    }


def branch_conv_count(model, mask):
    ref = masked(model, mask)
    total = sum(1 for m in ref.modules() if isinstance(m, nn.Conv2d))
    return total - sum(branch_convs(u) for (_, u), b in zip(skippable_units(ref), mask) if b == "1")


def check_common_metadata(meta, model, mask):
    assert meta["format"] == "paretoskip-export"
    assert meta["mask"] == mask
    assert meta["skipped"] == [n for (n, _), b in zip(skippable_units(model), mask) if b == "1"]
    assert meta["input"]["shape"] == ["batch", *model.input_shape]
    assert meta["input"]["normalization"]["mean"] == NORM[0]
    assert meta["input"]["normalization"]["std"] == NORM[1]
    assert meta["member"]["metrics"]["accuracy"]["value"] == 0.9
    assert meta["member"]["test_accuracy"] == 0.88
    assert meta["model"]["fingerprint"] == weights_fingerprint(model)
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["paretoskip"] == paretoskip.__version__


@pytest.mark.parametrize(
    "path, fmt, expected",
    [
        ("m.pt2", None, ("torch.export", "m.pt2")),
        ("m.PT", None, ("torchscript", "m.PT")),
        ("m.onnx", None, ("onnx", "m.onnx")),
        ("d/m.vmfb", None, ("iree", "d/m.vmfb")),
        ("d/m", "onnx", ("onnx", "d/m.onnx")),
        ("m.bin", "iree", ("iree", "m.bin")),
        ("m.onnx", "onnx", ("onnx", "m.onnx")),
    ],
)
def test_resolve_format(path, fmt, expected):
    got_fmt, got_path = resolve_format(path, fmt)
    assert (got_fmt, str(got_path)) == expected


def test_format_mismatch_and_unknown_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'x\.onnx'.*'onnx'.*'torch\.export'.*'\.pt2'"):
        resolve_format("x.onnx", "torch.export")
    with pytest.raises(ConfigError, match=r"'\.bin'.*\.pt2.*\.onnx.*\.vmfb"):
        resolve_format("x.bin")
    with pytest.raises(ConfigError, match=r"'x' \(it has no suffix\)"):
        resolve_format("x")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'.*onnx.*iree"):
        resolve_format("x.onnx", "tflite")
    model = make("resnet20")
    with pytest.raises(ConfigError, match="suffix of format 'torchscript'"):
        export_file(model, "0" * 9, tmp_path / "m.pt", format="onnx")
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
    exported = export_configuration(model, "0" * 9)
    with pytest.raises(ConfigError, match=r"torch\.export module as .*x\.onnx.*'onnx'"):
        save_exported(exported, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("fmt", ["torch.export", "torchscript"])
def test_torch_file_dynamic_batch_and_metadata(tmp_path, fmt):
    model = make("resnet20B")
    mask = "101000011"
    res = export_file(
        model,
        member_for(mask),
        tmp_path / "m",
        format=fmt,
        normalization=NORM,
        example_input=torch.randn(1, *model.input_shape),  # a batch of 1 traces dynamic too
    )
    assert res.path.suffix == {"torch.export": ".pt2", "torchscript": ".pt"}[fmt]
    assert sorted(res.max_abs_diff) == [1, 8]
    # Loaded with plain torch, no paretoskip code involved.
    if fmt == "torch.export":
        with open(res.path, "rb") as f:
            extra = {"paretoskip.json": ""}
            module = torch.export.load(f, extra_files=extra).module()
    else:
        extra = {"paretoskip.json": ""}
        module = torch.jit.load(str(res.path), _extra_files=extra)
    ref = masked(model, mask)
    with torch.no_grad():
        for batch in (1, 33):
            x = torch.randn(batch, *model.input_shape)
            torch.testing.assert_close(module(x), ref(x))
    embedded = json.loads(extra["paretoskip.json"])
    sidecar = json.loads(sidecar_path(res.path).read_text())
    assert embedded == sidecar == res.metadata == read_metadata(res.path)
    check_common_metadata(sidecar, model, mask)
    assert sidecar["export_format"] == fmt


def test_static_batch_is_static(tmp_path):
    model = make("resnet20")
    x = torch.randn(4, *model.input_shape)
    res = export_file(model, "0" * 9, tmp_path / "s.pt2", example_input=x, dynamic_batch=False)
    assert res.metadata["input"]["shape"] == [4, 1, 8, 8]
    assert list(res.max_abs_diff) == [4]
    module = load_exported(res.path)
    module(x)
    with pytest.raises(Exception, match="4"):  # the guard on the traced batch size
        module(torch.randn(1, *model.input_shape))


def test_metadata_from_dataset_and_provenance(tmp_path, digits, caplog):
    model = make("resnet20")
    res = export_file(model, "1" + "0" * 8, tmp_path / "d.pt2", normalization=digits)
    norm = res.metadata["input"]["normalization"]
    assert norm["mean"] == list(digits.mean) and norm["std"] == list(digits.std)
    assert normalization_of(digits.describe()) == normalization_of(digits)
    provenance = {
        "dataset": digits.describe(),
        "model": {"fingerprint": "0" * 64},  # another model's weights
    }
    with caplog.at_level(logging.WARNING, logger="paretoskip.export"):
        res = export_file(model, "1" + "0" * 8, tmp_path / "p.pt2", provenance=provenance)
    assert res.metadata["input"]["normalization"]["std"] == list(digits.std)
    assert res.metadata["dataset"]["fingerprint"] == digits.fingerprint
    assert res.metadata["dataset"]["classes"] == list(digits.classes)
    assert res.metadata["model"]["front_fingerprint"] == "0" * 64
    assert res.metadata["model"]["fingerprint"] == weights_fingerprint(model)
    assert "not those the front was searched for" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="paretoskip.export"):
        res = export_file(model, "0" * 9, tmp_path / "n.pt2")
    assert res.metadata["input"]["normalization"] is None
    assert "no input normalisation" in caplog.text


def test_bad_normalization():
    for bad, match in [
        (([0.1, 0.2], [0.3]), "mean has 2 values but std has 1"),
        (([0.1], [-1.0]), r"std must be positive.*-1\.0"),
        ({"mean": [0.1]}, "needs 'mean' and 'std'"),
        ("0.5", "not str"),
        (([float("nan")], [1.0]), "mean must be finite"),
    ]:
        with pytest.raises(ConfigError, match=match):
            normalization_of(bad)


def test_check_catches_another_model(tmp_path):
    model = make("resnet20")
    res = export_file(model, "0" * 9, tmp_path / "m.pt2")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(ExportCheckError, match=r"m\.pt2.*differs from the masked model"):
        check_exported(res.path, other, "0" * 9)
    assert isinstance(ExportCheckError("x"), ParetoSkipError)
    assert check_exported(res.path, model, "0" * 9, [3])[3] <= 1e-5


@pytest.mark.parametrize("key", list(MODELS))
def test_onnx_matches_masked_model_at_two_batch_sizes(tmp_path, key):
    import onnx
    import onnxruntime as ort

    model = make(key)
    n = len(skippable_units(model))
    masks = masks_for(n)[1:3] if key == "resnet20" else masks_for(n)[2:3]
    for i, mask in enumerate(masks):
        # check_batch_sizes=(): the file is checked here, with onnxruntime directly
        res = export_file(
            model,
            member_for(mask),
            tmp_path / f"m{i}.onnx",
            normalization=NORM,
            check_batch_sizes=(),
        )
        assert res.max_abs_diff == {}
        assert res.format == "onnx"
        session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert inp.name == "input" and inp.shape == ["batch", *model.input_shape]
        ref = masked(model, mask)
        for batch in (1, 9):
            x = torch.randn(batch, *model.input_shape)
            (got,) = session.run(None, {"input": x.numpy()})
            with torch.no_grad():
                want = ref(x).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        # No skipped convolution in the graph; the metadata is in the model and the sidecar.
        proto = onnx.load(str(res.path))
        assert sum(1 for node in proto.graph.node if node.op_type == "Conv") == branch_conv_count(
            model, mask
        )
        props = {p.key: p.value for p in proto.metadata_props}
        assert props == session.get_modelmeta().custom_metadata_map
        assert props["paretoskip.mask"] == mask
        assert json.loads(props["paretoskip.std"]) == NORM[1]
        embedded = json.loads(props["paretoskip"])
        assert embedded == json.loads(res.sidecar.read_text()) == read_metadata(res.path)
        check_common_metadata(embedded, model, mask)
        assert embedded["versions"]["onnx"] == onnx.__version__
        loaded = load_exported(res.path, threads=1)
        assert loaded.paretoskip_export == embedded
        x = torch.randn(2, *model.input_shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    not HAVE_IREE,
    reason="the IREE wheels are not installed (pip install 'paretoskip[iree]': "
    "iree-base-compiler, iree-base-runtime)",
)
@pytest.mark.parametrize("key, mask", [("resnet20", "101010101"), ("resnet18", "10010011")])
def test_iree_matches_masked_model_at_two_batch_sizes(tmp_path, key, mask):
    import iree.runtime as rt

    model = make(key)
    res = export_file(
        model, member_for(mask), tmp_path / "m.vmfb", normalization=NORM, check_batch_sizes=()
    )
    assert res.format == "iree"
    # Run it with the IREE runtime directly.
    config = rt.Config("local-task")
    context = rt.SystemContext(config=config)
    vm_module = rt.VmModule.mmap(config.vm_instance, str(res.path))
    context.add_vm_module(vm_module)
    main = context.modules[vm_module.name]["main"]
    ref = masked(model, mask)
    for batch in (1, 6):
        x = torch.randn(batch, *model.input_shape)
        got = np.asarray(main(x.numpy()).to_host())
        with torch.no_grad():
            want = ref(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    embedded = json.loads(vm_module.lookup_function("main").reflection["paretoskip"])
    assert embedded == json.loads(res.sidecar.read_text()) == read_metadata(res.path)
    check_common_metadata(embedded, model, mask)
    assert embedded["iree"] == {"target_backend": "llvm-cpu", "target_cpu": "host"}
    loaded = load_exported(res.path, threads=1)
    x = torch.randn(3, *model.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x), rtol=1e-4, atol=1e-5)


def test_normalisation_carries_the_pixel_scale_and_metadata_is_strict_json(digits):
    import json

    from paretoskip.export import _dumps, normalization_of

    norm = normalization_of(digits)
    assert norm["pixel_scale"] == 16.0 and norm["mean"] == list(digits.mean)
    assert normalization_of(digits.describe())["pixel_scale"] == 16.0
    assert json.loads(_dumps({"energy": float("nan"), "x": [float("inf"), 1.0]})) == {
        "energy": None,
        "x": [None, 1.0],
    }
