import pytest

import paretoskip
from paretoskip import SkipSpace
from paretoskip.errors import MaskError


@pytest.fixture
def space():
    model = paretoskip.create_model("resnet20")
    return SkipSpace.from_model(model, locked=["layer1.0"], groups=[["layer3.1", "layer3.2"]])


def test_genes_and_size(space):
    assert space.n_units == 9
    assert space.n_genes == 7  # 9 units - 1 locked - 1 (two units in one group)
    assert space.size == 128
    assert space.gene_names[-1] == "layer3.1+layer3.2"
    assert space.param_names[0] == "skip.layer1.1"
    assert space.locked_prefix == 1


def test_round_trips(space):
    mask = space.mask_from_genes([1, 0, 0, 1, 0, 0, 1])
    assert mask == (0, 1, 0, 0, 1, 0, 0, 1, 1)
    assert space.genes_from_mask(mask) == (1, 0, 0, 1, 0, 0, 1)
    text = space.to_bitstring(mask)
    assert text == "010010011"
    assert space.from_bitstring(text) == mask
    names = space.skipped_names(mask)
    assert names == ["layer1.1", "layer2.1", "layer3.1", "layer3.2"]
    assert space.from_names(names) == mask
    again = SkipSpace.from_json(space.to_json())
    assert again == space and again.fingerprint == space.fingerprint


def test_fingerprint_changes_with_locking():
    model = paretoskip.create_model("resnet20")
    assert (
        SkipSpace.from_model(model).fingerprint
        != SkipSpace.from_model(model, locked=["layer1.0"]).fingerprint
    )


@pytest.mark.parametrize(
    "mask,match",
    [
        ("01001001", "8 entries; this space has 9"),
        ("01001001x", r"\['x'\]"),
        ("110000000", "locked unit 'layer1.0'"),
        ("000000010", "splits the group"),
        ([0, 0, 0, 0, 0, 0, 0, 0, 2], "entry 2 is not 0/1"),
    ],
)
def test_bad_masks(space, mask, match):
    with pytest.raises(MaskError, match=match):
        space.validate(mask)


def test_bad_spaces():
    units = ("a", "b", "c")
    with pytest.raises(MaskError, match="unknown locked unit 'z'"):
        SkipSpace(units, locked=("z",))
    with pytest.raises(MaskError, match="both locked and in group"):
        SkipSpace(units, locked=("a",), groups=(("a", "b"),))
    with pytest.raises(MaskError, match="groups 0 and 1"):
        SkipSpace(units, groups=(("a", "b"), ("b", "c")))
    with pytest.raises(MaskError, match="every unit is locked"):
        SkipSpace(units, locked=units)
    with pytest.raises(MaskError, match="unknown unit 'q'"):
        SkipSpace(units).from_names(["q"])


def test_space_must_match_model():
    space = SkipSpace.from_model(paretoskip.create_model("resnet20"))
    with pytest.raises(MaskError, match="9 units in the space, 27 in the model"):
        space.check_model(paretoskip.create_model("resnet56"))
