"""AdaptiveModel: selection under budgets, hysteresis, errors, and allocation-free switching.

The front is built by hand from a real resnet20: FLOPs are counted for every mask, the
accuracies are made up (this tests the selection logic, not a search).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import sys
import time
import tracemalloc

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import paretoskip
from paretoskip.errors import BudgetError, ConfigError, MaskError
from paretoskip.models import apply_mask, get_mask, skippable_units
from paretoskip.runtime import AdaptiveModel, load_front

KWARGS = {"num_classes": 10, "in_channels": 1, "input_size": 8}
# mask -> made-up validation accuracy.  "000000011" is dominated (near-Pareto band member).
ACCURACY = {
    "000000000": 0.95,
    "100000000": 0.94,
    "010010000": 0.92,
    "000000011": 0.90,
    "011011000": 0.88,
    "011011011": 0.70,
    "111111111": 0.30,
}


def _flops(model, mask, x):
    m = copy.deepcopy(model).eval()
    apply_mask(m, mask)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(x)
    return counter.get_total_flops()


def _metric(value, unit, source, spread=None):
    return {"value": value, "unit": unit, "source": source, "spread": spread}


def _metrics(acc, flops):
    return {
        "accuracy": _metric(acc, "fraction", "measured:validation"),
        "flops": _metric(float(flops), "FLOPs", "counted:flop_counter"),
        "latency": _metric(flops * 1e-9, "s", "measured:wall-clock", flops * 1e-11),
        "energy": _metric(None, "J", "unavailable"),
    }


def build_front(model):
    units = [n for n, _ in skippable_units(model)]
    x = torch.zeros(1, 1, 8, 8)
    flops = {mask: _flops(model, mask, x) for mask in ACCURACY}
    members = [
        {
            "mask": mask,
            "skipped": [u for u, b in zip(units, mask) if b == "1"],
            "metrics": _metrics(acc, flops[mask]),
            "test_accuracy": acc - 0.01,
            "strict": mask != "000000011",
            "trial": k,
        }
        for k, (mask, acc) in enumerate(ACCURACY.items())
    ]
    return {
        "schema_version": 1,
        "study": {"name": "t", "storage": "sqlite:///t.db", "engine": "exhaustive", "budget": 7},
        "provenance": {"model": {"name": "resnet20", "kwargs": KWARGS, "fingerprint": "x"}},
        "space": {"units": units, "locked": [], "groups": []},
        "objectives": [
            {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
            {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
        ],
        "reference": {
            "mask": "0" * 9,
            "metrics": _metrics(0.95, flops["0" * 9]),
            "test_accuracy": 0.94,
        },
        "members": members,
        "hypervolume": {
            "value": 0.5,
            "reference_point": {"accuracy": 0.0, "flops": flops["0" * 9]},
        },
    }


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = paretoskip.create_model("resnet20", **KWARGS).eval()
    return model, build_front(model)


@pytest.fixture
def model(base):
    return copy.deepcopy(base[0])


@pytest.fixture
def front(base):
    return copy.deepcopy(base[1])


@pytest.fixture
def front_file(front, tmp_path):
    path = tmp_path / "front.json"
    path.write_text(json.dumps(front))
    return path


def expected_best(front, **bounds):
    """Brute force: the most accurate member within (metric, op, limit) bounds."""
    ok = [
        m
        for m in front["members"]
        if all(
            (m["metrics"][k]["value"] <= v) if op == "<=" else (m["metrics"][k]["value"] >= v)
            for k, (op, v) in bounds.items()
        )
    ]
    return max(ok, key=lambda m: m["metrics"]["accuracy"]["value"]) if ok else None


def flops_of(front, mask):
    return next(m["metrics"]["flops"]["value"] for m in front["members"] if m["mask"] == mask)


# --------------------------------------------------------------------------- selection


def test_load_front_from_file(front_file, model):
    adaptive = AdaptiveModel(model, front_file)
    assert len(adaptive.members) == len(ACCURACY)
    assert adaptive.current is None
    assert set(adaptive.metrics) == {"accuracy", "flops", "latency", "energy"}


@pytest.mark.parametrize(
    "mask_limit", ["100000000", "010010000", "011011000", "011011011", "111111111"]
)
def test_select_absolute_flops(model, front, mask_limit):
    adaptive = AdaptiveModel(model, front)
    limit = flops_of(front, mask_limit)
    chosen = adaptive.select(flops=limit)
    want = expected_best(front, flops=("<=", limit))
    assert chosen["mask"] == want["mask"]
    assert chosen["metrics"]["flops"]["value"] <= limit
    assert adaptive.current is chosen
    assert "".join(map(str, get_mask(model))) == chosen["mask"]


def test_select_absolute_between_members(model, front):
    adaptive = AdaptiveModel(model, front)
    # Just under the second-most-expensive member: it no longer fits.
    limit = flops_of(front, "100000000") - 1
    chosen = adaptive.select(flops=limit)
    assert chosen["mask"] == expected_best(front, flops=("<=", limit))["mask"]
    assert chosen["mask"] not in ("000000000", "100000000")


def test_select_relative(model, front):
    adaptive = AdaptiveModel(model, front)
    ref = front["reference"]["metrics"]["flops"]["value"]
    for pct in (100, 90, 75, 60, 40, 20):
        chosen = adaptive.select(flops=f"{pct}%")
        want = expected_best(front, flops=("<=", ref * pct / 100))
        assert chosen["mask"] == want["mask"], pct
    # Relative lower bound on accuracy (of the full model's 0.95), combined with a FLOPs cap.
    chosen = adaptive.select(accuracy="95%", flops="90%")
    want = expected_best(front, accuracy=(">=", 0.95 * 0.95), flops=("<=", 0.9 * ref))
    assert chosen["mask"] == want["mask"]


def test_select_exact_relative_bound_is_not_lost_to_rounding(model, front):
    adaptive = AdaptiveModel(model, front)
    ref = front["reference"]["metrics"]["flops"]["value"]
    target = flops_of(front, "011011000")
    pct = f"{100 * target / ref!r}%"
    assert adaptive.select(flops=pct)["mask"] == "011011000"


def test_select_accuracy_lower_bound_and_latency(model, front):
    adaptive = AdaptiveModel(model, front)
    chosen = adaptive.select(accuracy=0.85)
    assert chosen["mask"] == "000000000"  # no cost bound: the most accurate
    lat = front["members"][4]["metrics"]["latency"]["value"]  # 011011000
    chosen = adaptive.select(accuracy=0.85, latency=lat)
    assert (
        chosen["mask"] == expected_best(front, accuracy=(">=", 0.85), latency=("<=", lat))["mask"]
    )


def test_selected_model_computes_masked_model(model, front):
    adaptive = AdaptiveModel(model, front)
    ref_model = copy.deepcopy(model)
    x = torch.randn(4, 1, 8, 8)
    for limit in ("80%", "50%", "10%"):
        chosen = adaptive.select(flops=limit)
        apply_mask(ref_model, chosen["mask"])
        with torch.no_grad():
            torch.testing.assert_close(adaptive(x), ref_model(x))
        # and the work actually done is the member's FLOPs (batch 1)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            adaptive(x[:1])
        assert counter.get_total_flops() == chosen["metrics"]["flops"]["value"]


def test_apply_by_index_dict_and_mask(model, front):
    adaptive = AdaptiveModel(model, front)
    adaptive.apply(4)
    assert adaptive.current_index == 4
    assert "".join(map(str, get_mask(model))) == front["members"][4]["mask"]
    adaptive.apply(adaptive.members[2])
    assert adaptive.current_index == 2
    adaptive.apply("011011011")
    assert adaptive.current["mask"] == "011011011"
    adaptive.apply([0, 1, 0, 0, 1, 0, 0, 0, 0])
    assert adaptive.current["mask"] == "010010000"
    adaptive.apply("001000000")  # valid, not a member
    assert adaptive.current is None
    assert get_mask(model) == [0, 0, 1, 0, 0, 0, 0, 0, 0]
    with pytest.raises(MaskError):
        adaptive.apply("0101")
    with pytest.raises(ConfigError, match="out of range"):
        adaptive.apply(len(ACCURACY))


# --------------------------------------------------------------------------- hysteresis


def test_hysteresis(model, front):
    ref = front["reference"]["metrics"]["flops"]["value"]
    f = {m: flops_of(front, m) for m in ACCURACY}
    adaptive = AdaptiveModel(model, front, hysteresis=0.05)
    assert adaptive.select(flops=f["011011000"])["mask"] == "011011000"  # acc 0.88
    # 010010000 (0.92) fits now, but +0.04 <= 0.05: stay.
    assert adaptive.select(flops=f["010010000"])["mask"] == "011011000"
    # 100000000 (0.94) fits: +0.06 > 0.05: switch up.
    assert adaptive.select(flops=f["100000000"])["mask"] == "100000000"
    # 000000000 (0.95) fits: +0.01: stay.
    assert adaptive.select(flops=ref)["mask"] == "100000000"
    # The current one no longer fits: switch down at once, even to a much worse member.
    assert adaptive.select(flops=f["011011011"])["mask"] == "011011011"
    assert "".join(map(str, get_mask(model))) == "011011011"

    # Without hysteresis the same sequence follows the budget exactly.
    plain = AdaptiveModel(copy.deepcopy(model), front)
    for key in ("011011000", "010010000", "100000000"):
        assert plain.select(flops=f[key])["mask"] == key
    assert plain.select(flops=ref)["mask"] == "000000000"


def test_bad_hysteresis(model, front):
    with pytest.raises(ConfigError, match="hysteresis"):
        AdaptiveModel(model, front, hysteresis=-0.1)


# --------------------------------------------------------------------------- nothing fits


def test_nothing_fits_error(model, front):
    adaptive = AdaptiveModel(model, front)
    cheapest = min(front["members"], key=lambda m: m["metrics"]["flops"]["value"])
    with pytest.raises(BudgetError) as info:
        adaptive.select(flops=1.0, accuracy=0.5)
    msg = str(info.value)
    assert "tightest bound is flops <= 1" in msg
    assert cheapest["mask"] in msg
    assert "fallback='cheapest'" in msg
    assert adaptive.current is None  # nothing was applied


def test_nothing_fits_fallback_cheapest(model, front, caplog):
    adaptive = AdaptiveModel(model, front)
    with caplog.at_level(logging.WARNING, logger="paretoskip.runtime"):
        chosen = adaptive.select(latency=1e-12, fallback="cheapest")
    cheapest = min(front["members"], key=lambda m: m["metrics"]["latency"]["value"])
    assert chosen["mask"] == cheapest["mask"] == "111111111"
    assert "".join(map(str, get_mask(model))) == "111111111"
    assert any("falling back to the cheapest by latency" in r.getMessage() for r in caplog.records)


def test_bad_fallback(model, front):
    with pytest.raises(ConfigError, match="fallback"):
        AdaptiveModel(model, front).select(flops=1e9, fallback="closest")


# --------------------------------------------------------------------------- bad budgets


def test_unknown_metric_lists_metrics(model, front):
    with pytest.raises(ConfigError) as info:
        AdaptiveModel(model, front).select(flopz=1e6)
    assert "flopz" in str(info.value)
    for name in ("accuracy", "flops", "latency", "energy"):
        assert name in str(info.value)


def test_unavailable_metric(model, front):
    with pytest.raises(ConfigError, match="energy.*null for every member.*unavailable"):
        AdaptiveModel(model, front).select(energy=1.0)


def test_bad_budget_values(model, front):
    adaptive = AdaptiveModel(model, front)
    for bad in ("50", "half", float("nan"), True, None):
        with pytest.raises(ConfigError, match="budget flops"):
            adaptive.select(flops=bad)


def test_relative_bound_needs_reference(model, front):
    front["reference"]["metrics"]["latency"]["value"] = None
    with pytest.raises(ConfigError, match="reference value of 'latency' is null"):
        AdaptiveModel(model, front).select(latency="50%")


def test_member_with_null_value_does_not_fit(model, front):
    front["members"][0]["metrics"]["latency"]["value"] = None  # the most accurate member
    adaptive = AdaptiveModel(model, front)
    assert adaptive.select(latency=1.0)["mask"] == "100000000"
    assert adaptive.select(flops=1e12)["mask"] == "000000000"


# --------------------------------------------------------------------------- front / units checks


def test_units_mismatch_other_model(front):
    other = paretoskip.create_model("resnet32", **KWARGS)
    with pytest.raises(MaskError, match=r"not in the front: \['layer1.3'"):
        AdaptiveModel(other, front)


def test_units_mismatch_renamed(model, front):
    front["space"]["units"][4] = "stage2.1"
    with pytest.raises(MaskError, match="stage2.1"):
        AdaptiveModel(model, front)
    AdaptiveModel(model, front, check_units=False)  # same count: accepted when asked


def test_units_mismatch_order(model, front):
    u = front["space"]["units"]
    u[0], u[1] = u[1], u[0]
    with pytest.raises(MaskError, match="different order"):
        AdaptiveModel(model, front)


def test_bad_member_mask(model, front):
    front["members"][3]["mask"] = "0102"
    with pytest.raises(MaskError, match="front member 3"):
        AdaptiveModel(model, front)


def test_skipped_list_must_match_mask(model, front):
    front["members"][2]["skipped"] = ["layer1.0"]
    with pytest.raises(MaskError, match="front member 2: 'skipped'"):
        AdaptiveModel(model, front)


@pytest.mark.parametrize(
    "path, key",
    [
        (("members", 2, "mask"), "members[2].mask"),
        (("space", "units"), "space.units"),
        (("reference",), "reference"),
        (("schema_version",), "schema_version"),
    ],
)
def test_load_front_missing_key(front, tmp_path, path, key):
    node = front
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    f = tmp_path / "broken.json"
    f.write_text(json.dumps(front))
    with pytest.raises(ConfigError) as info:
        load_front(f)
    assert repr(key) in str(info.value) and "broken.json" in str(info.value)


def test_load_front_version_and_garbage(front, tmp_path):
    front["schema_version"] = 2
    f = tmp_path / "v2.json"
    f.write_text(json.dumps(front))
    with pytest.raises(ConfigError, match="schema_version 2 is not supported"):
        load_front(f)
    g = tmp_path / "garbage.json"
    g.write_text("{not json")
    with pytest.raises(ConfigError, match="garbage.json.*not valid JSON"):
        load_front(g)
    with pytest.raises(ConfigError, match="does not exist"):
        load_front(tmp_path / "missing.json")


def test_nan_energy_in_file(model, front, tmp_path):
    # json writes NaN for an unmeasured energy; it must read as unavailable, never as 0.
    for m in front["members"]:
        m["metrics"]["energy"]["value"] = math.nan
    f = tmp_path / "nan.json"
    f.write_text(json.dumps(front))
    with pytest.raises(ConfigError, match="null for every member"):
        AdaptiveModel(model, f).select(energy=10.0)


# --------------------------------------------------------------------------- zero-overhead switching


#: bytes retained by 9,000 extra calls that still count as nothing retained (see below)
LEAK_BOUND = 256


def _memory_growth(fn, n=1000):
    """(retained, peak) bytes Python allocates while calling fn(k) for k < n, beyond the
    constant cost of the measuring loop itself (measured with a no-op).

    Retained bytes count only blocks allocated under a call made from this file, so a
    background thread an earlier test left running (a database pool, a heartbeat, a progress
    monitor) cannot add to them. The peak is tracemalloc's, over every thread, so the calls
    run with a switch interval far longer than the loop: fn is pure Python and never
    releases the GIL, so no other thread runs (and allocates) while they do.
    """
    own = [
        tracemalloc.Filter(True, __file__, all_frames=True),
        tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True),
    ]

    def measure(f):
        for k in range(8):
            f(k)
        gc.collect()
        tracemalloc.start(16)  # frames enough to reach this file's call from any allocation
        interval = sys.getswitchinterval()
        try:
            sys.setswitchinterval(60.0)
            time.sleep(0.001)  # a thread already due the GIL takes its turn now, not in the loop
            tracemalloc.reset_peak()
            b0 = tracemalloc.get_traced_memory()[0]
            for k in range(n):
                f(k)
            peak = tracemalloc.get_traced_memory()[1]
            retained = sum(
                s.size for s in tracemalloc.take_snapshot().filter_traces(own).statistics("lineno")
            )
        finally:
            sys.setswitchinterval(interval)
            tracemalloc.stop()
        return retained, peak - b0

    noop = measure(lambda k: None)
    got = measure(fn)
    return got[0] - noop[0], got[1] - noop[1]


def test_switching_does_not_allocate(model, front):
    adaptive = AdaptiveModel(model, front)
    n = len(front["members"])
    params = [(p, p.data_ptr()) for p in list(model.parameters()) + list(model.buffers())]

    # Nothing retained, whether 1000 or 10000 switches; at most an iterator alive at a time.
    # LEAK_BOUND is far below what retaining anything per switch costs over 9,000 more
    # switches (>= 16 bytes each).
    retained, peak = _memory_growth(lambda k: adaptive.apply(k % n))
    retained_10k, _ = _memory_growth(lambda k: adaptive.apply(k % n), n=10000)
    assert peak < 256, peak
    assert retained_10k - retained <= LEAK_BOUND, (retained, retained_10k)

    # Control: a switch that builds a flag list per call, or goes through apply_mask, is
    # caught by the same measure.
    units = [u for _, u in skippable_units(model)]
    masks = [m["mask"] for m in front["members"]]

    def naive(k):
        for u, b in zip(units, [c == "1" for c in masks[k % n]]):
            object.__setattr__(u, "skip", b)

    assert _memory_growth(naive)[1] >= 256
    assert _memory_growth(lambda k: apply_mask(model, masks[k % n]))[1] >= 256

    # select allocates its temporary bounds, but retains nothing.
    limits = [f"{p}%" for p in (90, 40, 75, 20, 100)]
    retained, _ = _memory_growth(lambda k: adaptive.select(flops=limits[k % len(limits)]))
    retained_10k, _ = _memory_growth(
        lambda k: adaptive.select(flops=limits[k % len(limits)]), n=10000
    )
    assert retained_10k - retained <= LEAK_BOUND, (retained, retained_10k)

    # No tensor was copied or replaced; the model is the caller's model.
    assert adaptive.model is model
    assert all(p.data_ptr() == ptr for p, ptr in params)
    assert [p for p, _ in params] == list(model.parameters()) + list(model.buffers())
