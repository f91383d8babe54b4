"""Figures: every plot writes readable PNG/PDF files of the expected size, units and sources
are in the labels, and an unavailable energy is never drawn (let alone as 0)."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import paretoskip
from paretoskip import plots
from paretoskip.errors import ConfigError
from paretoskip.front import Front, hypervolume
from paretoskip.study import StudyDB

BUDGET = 30


def _model():
    torch.manual_seed(0)
    model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    for mod in model.modules():  # non-trivial statistics so that skipping changes predictions
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def auto_study(digits, tmp_path_factory):
    """accuracy/flops; energy measured with energy='auto' (unavailable on this machine)."""
    storage = tmp_path_factory.mktemp("plots") / "auto.db"
    ev = paretoskip.Evaluator(_model(), digits, settings=paretoskip.MeasureSettings(energy="auto"))
    front = paretoskip.search(
        ev, budget=BUDGET, engine="nsga2", storage=storage, study_name="auto", progress=False
    )
    return StudyDB.load(storage, "auto"), front


@pytest.fixture(scope="module")
def estimated_study(digits, tmp_path_factory):
    """accuracy/flops/energy with a (labelled) estimated energy."""
    storage = tmp_path_factory.mktemp("plots") / "est.db"
    settings = paretoskip.MeasureSettings(energy="estimated", energy_seconds=0.05)
    ev = paretoskip.Evaluator(_model(), digits, settings=settings)
    front = paretoskip.search(
        ev,
        objectives=("accuracy", "flops", "energy"),
        budget=20,
        engine="random",
        storage=storage,
        study_name="est",
        progress=False,
    )
    return StudyDB.load(storage, "est"), front


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.size


def _check_files(paths, size_in):
    """Every PNG is readable with size_in × 200 dpi pixels; every PDF is a real PDF page."""
    assert paths
    pngs = [p for p in paths if p.suffix == ".png"]
    pdfs = [p for p in paths if p.suffix == ".pdf"]
    assert len(pngs) == len(pdfs)
    for p in paths:
        assert p.stat().st_size > 1000, p
    w, h = size_in
    for p in pngs:
        assert _png_size(p) == (round(w * plots.DPI), round(h * plots.DPI)), p
        assert mpimg.imread(p).std() > 0.01  # matplotlib reads it back, and it is not blank
    for p in pdfs:
        data = p.read_bytes()
        assert data.startswith(b"%PDF")
        box = re.search(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data)
        assert (
            box
            and float(box[1]) == pytest.approx(w * 72)
            and float(box[2]) == pytest.approx(h * 72)
        )


def _labels(fig):
    return [a.get_xlabel() for a in fig.axes] + [a.get_ylabel() for a in fig.axes]


def _no_pyplot_figures():
    from matplotlib._pylab_helpers import Gcf

    return Gcf.get_num_fig_managers() == 0


# -- plot_pairs / build_pairs ------------------------------------------------------------
def test_pairs_files_and_unavailable_energy(auto_study, tmp_path):
    db, front = auto_study
    paths = plots.plot_pairs(db, front, tmp_path, prefix="p_")
    names = {p.name for p in paths}
    assert {"p_accuracy-vs-flops.png", "p_accuracy-vs-flops.pdf"} <= names
    assert {"p_accuracy-vs-params.png", "p_accuracy-vs-params.pdf"} <= names  # extra cost
    # energy is unavailable here: no energy plot, a note saying why instead
    assert "p_accuracy-vs-energy.png" not in names
    assert "p_accuracy-vs-energy_unavailable.png" in names
    plots_ = [p for p in paths if "unavailable" not in p.name]
    notes = [p for p in paths if "unavailable" in p.name]
    _check_files(plots_, plots.PAIR_SIZE)
    _check_files(notes, plots.NOTE_SIZE)
    assert _no_pyplot_figures()


def test_unavailable_energy_is_not_drawn(auto_study):
    db, front = auto_study
    assert db.reference()["metrics"]["energy"]["source"] == "unavailable"
    figs = plots.build_pairs(db, front)
    for stem, fig in figs.items():
        assert not any("nergy" in lab for lab in _labels(fig)), stem
    note = figs["accuracy-vs-energy_unavailable"]
    assert note.axes == []  # no axes at all, so no point, let alone a 0
    text = " ".join(" ".join(t.get_text().split()) for t in note.texts)  # wrapped lines
    assert "energy is unavailable" in text and "never plotted as 0" in text


def test_pairs_content(auto_study):
    db, front = auto_study
    fig = plots.build_pairs(db, front)["accuracy-vs-flops"]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Validation accuracy (%)"
    assert "MFLOPs" in ax.get_xlabel()  # resnet20 on 8×8 digits: ~5 MFLOPs
    assert db.name in ax.get_title(loc="left")
    # the secondary axis shows % of the full model
    assert any("% of full model" in a.get_xlabel() for a in ax.child_axes)
    # the full model is a star at its own (MFLOPs, %) coordinates
    ref = db.reference()["metrics"]
    star = [c for c in ax.collections if c.get_paths() and len(c.get_offsets()) == 1]
    xy = np.vstack([c.get_offsets() for c in star])
    assert np.any(
        np.all(
            np.isclose(xy, [ref["flops"]["value"] / 1e6, ref["accuracy"]["value"] * 100]), axis=1
        )
    )
    # every evaluated point is there, accuracy in % and FLOPs in MFLOPs
    pts = np.vstack([c.get_offsets() for c in ax.collections])
    for t in db.trials():
        acc, flops = t.values
        assert np.any(np.all(np.isclose(pts, [flops / 1e6, acc * 100]), axis=1))
    # legend outside the axes, below them
    (leg,) = fig.legends
    fig.canvas.draw()
    assert leg.get_window_extent().y1 <= ax.get_window_extent().y0
    texts = [t.get_text() for t in leg.get_texts()]
    assert any(t.startswith("Pareto front") for t in texts)
    assert "full model" in texts


def test_estimated_energy_is_labelled(estimated_study):
    db, front = estimated_study
    figs = plots.build_pairs(db, front)
    assert {"accuracy-vs-flops", "accuracy-vs-energy", "energy-vs-flops"} <= set(figs)
    energy_labels = [lab for f in figs.values() for lab in _labels(f) if "Energy" in lab]
    assert energy_labels
    assert all("(estimated)" in lab for lab in energy_labels)
    # the values drawn are the measured ones, none replaced by 0
    ax = figs["accuracy-vs-energy"].axes[0]
    label = ax.get_xlabel()
    scale = {"J": 1.0, "mJ": 1e3, "µJ": 1e6, "nJ": 1e9}[re.search(r"\((\S*J) per", label)[1]]
    from matplotlib.collections import PathCollection  # the points, not the error bars

    pts = np.vstack([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert np.all(pts[:, 0] > 0)
    energies = [t.user_attrs["energy"] for t in db.trials()]
    for e in energies:
        assert np.any(np.isclose(pts[:, 0], e * scale))


# -- hypervolume -------------------------------------------------------------------------
def test_hypervolume_curve_matches_front(auto_study, estimated_study):
    for db, front in (auto_study, estimated_study):
        n, hv = plots.hypervolume_curve(db)
        trials = sorted(db.trials(), key=lambda t: t.number)
        assert list(n) == list(range(1, len(trials) + 1))
        assert np.all(np.diff(hv) >= -1e-12)
        assert hv[-1] == pytest.approx(front.hypervolume, rel=1e-9)
        # brute force: the hypervolume of every prefix, with front.hypervolume
        ref = {k: m["value"] for k, m in db.reference()["metrics"].items()}
        for k in (1, 2, 5, len(trials) // 2, len(trials)):
            vals = np.array([t.values for t in trials[:k]], dtype=float)
            assert hv[k - 1] == pytest.approx(hypervolume(vals, db.objectives, ref), abs=1e-12)


def test_plot_hypervolume_overlay(auto_study, estimated_study, tmp_path):
    dbs = [auto_study[0], estimated_study[0]]
    fig = plots.build_hypervolume(dbs, labels=["auto", "estimated"])
    (leg,) = fig.legends
    texts = [t.get_text() for t in leg.get_texts()]
    assert texts[0].startswith("auto") and texts[1].startswith("estimated")
    assert "not comparable" in leg.get_title().get_text()  # different objectives
    paths = plots.plot_hypervolume(dbs, tmp_path / "hv.png", labels=["a", "b"])
    assert sorted(p.name for p in paths) == ["hv.pdf", "hv.png"]
    _check_files(paths, plots.HV_SIZE)
    with pytest.raises(ConfigError):
        plots.build_hypervolume(dbs, labels=["only one"])


def test_hypervolume_curve_is_fast_on_many_trials(auto_study):
    """Recomputed only when the front changes: 20k trials in well under a few seconds."""
    import time

    db, _ = auto_study
    trials = db.trials()
    rng = np.random.default_rng(0)

    class Fake:
        name = db.name
        objectives = db.objectives
        meta = db.meta

        def reference(self):
            return db.reference()

        def trials(self):
            out = []
            for i in range(20000):
                t = copy.copy(trials[i % len(trials)])
                t.number = i
                t.values = [rng.uniform(0, 1), rng.uniform(0.2, 1.2) * 5e6]
                out.append(t)
            return out

    t0 = time.perf_counter()
    n, hv = plots.hypervolume_curve(Fake())
    assert len(n) == 20000 and hv[-1] > 0
    assert time.perf_counter() - t0 < 10


# -- unit frequency ----------------------------------------------------------------------
def test_unit_frequency(auto_study, tmp_path):
    db, front = auto_study
    data = copy.deepcopy(front.data)
    data["space"]["locked"] = ["layer1.0"]
    for m in data["members"]:
        m["mask"] = "0" + m["mask"][1:]
    locked_front = Front(data)
    fig = plots.build_unit_frequency(locked_front)
    ax = fig.axes[0]
    strict = [m for m in data["members"] if m["strict"]]
    expected = [100 * np.mean([m["mask"][i] == "1" for m in strict]) for i in range(1, 9)]
    free_bars = [p for p in ax.patches if p.get_hatch() is None]
    assert [b.get_height() for b in free_bars] == pytest.approx(expected)
    locked = [p for p in ax.patches if p.get_hatch()]
    assert len(locked) == 1 and locked[0].get_x() < 0  # unit 0 is shown as locked
    assert any(t.get_text() == "locked" for t in ax.texts)
    # stage boundaries between layer1|layer2 and layer2|layer3, stage names above
    vlines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert sorted(ln.get_xdata()[0] for ln in vlines) == [2.5, 5.5]
    assert {"layer1", "layer2", "layer3"} <= {t.get_text() for t in ax.texts}
    paths = plots.plot_unit_frequency(locked_front, tmp_path / "units")
    _check_files(paths, (5.6, 3.9))


# -- several fronts ----------------------------------------------------------------------
def test_plot_fronts(auto_study, estimated_study, tmp_path):
    fronts = [auto_study[1], estimated_study[1]]
    fig = plots.build_fronts(fronts, labels=["plain", "stochastic depth"])
    ax = fig.axes[0]
    assert "MFLOPs" in ax.get_xlabel() and ax.get_ylabel() == "Validation accuracy (%)"
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[0].startswith("plain") and texts[1].startswith("stochastic depth")
    assert "full model (each)" in texts

    rel = plots.build_fronts(fronts, relative=True)
    ax = rel.axes[0]
    assert "% of own full model" in ax.get_xlabel()
    stars = [c for c in ax.collections if len(c.get_offsets()) == 1 and c.get_sizes()[0] > 100]
    assert len(stars) == 2
    for c in stars:
        assert c.get_offsets()[0][0] == pytest.approx(100.0)

    # energy: unavailable in one front, estimated in the other -> only the latter is drawn
    fig = plots.build_fronts(fronts, x="energy")
    assert "estimated" in fig.axes[0].get_xlabel()
    with pytest.raises(ConfigError, match="never plotted as 0"):
        plots.build_fronts([auto_study[1]], x="energy")
    with pytest.raises(ConfigError):
        plots.build_fronts(fronts, x="wattage")

    paths = plots.plot_fronts(fronts, tmp_path / "fronts", formats=("png", "pdf", "svg"))
    assert sorted(p.suffix for p in paths) == [".pdf", ".png", ".svg"]
    _check_files([p for p in paths if p.suffix != ".svg"], plots.PAIR_SIZE)
    assert paths[-1].read_text().lstrip().startswith("<?xml")


# -- everything for one study ------------------------------------------------------------
def test_plot_study(estimated_study, tmp_path):
    db, front = estimated_study
    paths = plots.plot_study(db, front, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert all(n.startswith("est_") for n in names)
    for stem in (
        "est_accuracy-vs-flops",
        "est_accuracy-vs-energy",
        "est_energy-vs-flops",
        "est_hypervolume",
        "est_units",
    ):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
    assert _no_pyplot_figures()
    # the front defaults to the study's
    assert set(plots.build_pairs(db)) == {
        n[4:-4] for n in names if "-vs-" in n and n.endswith(".png")
    }


def test_bad_formats(auto_study, tmp_path):
    with pytest.raises(ConfigError, match="formats"):
        plots.plot_unit_frequency(auto_study[1], tmp_path / "u", formats=("jpg",))
    assert not list(tmp_path.iterdir())


def test_import_does_not_touch_matplotlib():
    code = (
        "import sys, paretoskip, paretoskip.plots; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_labels_scale_units():
    ax = plots._axis("flops", np.array([3.2e9]))
    assert ax.label.startswith("Compute (GFLOPs") and ax.show(3.2e9) == pytest.approx(3.2)
    ax = plots._axis("latency", np.array([0.004]), batch=32)
    assert ax.label == "Latency (ms per batch of 32)"
    ax = plots._axis("energy", np.array([0.5, math.nan]), sources={"measured:rapl"})
    assert "RAPL" in ax.label and "mJ" in ax.label and "estimated" not in ax.label
