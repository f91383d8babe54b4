"""The command line, end to end: `paretoskip run` in a subprocess on a small digits study,
then every other subcommand on its results."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from paretoskip.cli import build_parser, main

STUDY = """\
[study]
name = "tiny"
seed = 0

[model]
name = "resnet20"

[model.train]
epochs = 1

[data]
name = "digits"

[search]
engine = "pymoo-nsga2"
budget = {budget}

[search.options]
pop_size = 8
"""
BUDGET = 16
COMMANDS = (
    "run",
    "train",
    "search",
    "front",
    "plot",
    "family",
    "select",
    "export",
    "info",
    "worker",
)


def paretoskip(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m paretoskip ARGS` in ``cwd``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "paretoskip", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def n_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return 0


def n_distinct_masks(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT value_json FROM trial_user_attributes WHERE key = 'mask'"
        ).fetchall()
    return len({json.loads(v) for (v,) in rows})


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A directory where `paretoskip run tiny.toml` ran once, from nothing."""
    work = tmp_path_factory.mktemp("cli")
    (work / "tiny.toml").write_text(STUDY.format(budget=BUDGET))
    result = paretoskip("run", "tiny.toml", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, result


@pytest.fixture
def in_done(done, monkeypatch):
    work, _ = done
    monkeypatch.chdir(work)
    return work


# --------------------------------------------------------------------------- run


def test_run_trains_searches_and_writes_the_front(done):
    work, result = done
    assert (work / "studies/checkpoints/tiny.safetensors").is_file()
    assert (work / "studies/tiny.db").is_file()
    doc = json.loads((work / "studies/tiny.front.json").read_text())
    assert doc["study"]["name"] == "tiny" and doc["study"]["budget"] == BUDGET
    assert [o["name"] for o in doc["objectives"]] == ["accuracy", "flops"]
    assert doc["members"] and any(m["strict"] for m in doc["members"])
    assert all(m["test_accuracy"] is not None for m in doc["members"])
    with open(work / "studies/tiny.front.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["mask"] for r in rows] == [m["mask"] for m in doc["members"]]
    assert n_distinct_masks(work / "studies/tiny.db") == BUDGET
    # the terminal output: the table and where everything went
    out = result.stdout
    assert "accuracy [fraction]" in out and "hypervolume" in out
    for where in ("studies/tiny.db", "studies/tiny.front.json", "studies/tiny.front.csv"):
        assert where in out
    assert "Traceback" not in result.stderr
    # a log line while the front members' test accuracies are measured (after the search)
    assert "test accuracies measured in" in result.stderr


def test_run_writes_plots(done):
    if importlib.util.find_spec("paretoskip.plots") is None:
        pytest.skip("paretoskip/plots.py has not landed yet")
    work, result = done
    files = sorted((work / "studies/plots").iterdir())
    pngs = [f for f in files if f.suffix == ".png"]
    assert pngs and any(f.suffix == ".pdf" for f in files)
    assert all(f.stat().st_size > 1000 for f in files)
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in pngs)
    assert all(f.name.startswith("tiny") for f in files)
    assert "studies/plots/" in result.stdout
    assert not (work / "plots").exists()  # a checkout's tracked plots/ is never written


def test_second_run_resumes_without_new_evaluations(done):
    work, _ = done
    db = work / "studies/tiny.db"
    before = n_trials(db)
    ckpt_mtime = (work / "studies/checkpoints/tiny.safetensors").stat().st_mtime_ns
    result = paretoskip("run", "tiny.toml", "--no-plots", "-q", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert n_trials(db) == before
    assert n_distinct_masks(db) == BUDGET
    assert "(0 evaluated now" in result.stdout
    assert (work / "studies/checkpoints/tiny.safetensors").stat().st_mtime_ns == ckpt_mtime


# --------------------------------------------------------------------------- other commands


def test_front_command(in_done, capsys):
    assert main(["front", "studies/tiny.front.json"]) == 0
    from_file = capsys.readouterr().out
    assert "accuracy [fraction]" in from_file and "hypervolume" in from_file
    assert main(["front", "tiny.toml", "--strict"]) == 0
    assert "strict" in capsys.readouterr().out
    assert main(["front", "tiny.toml", "--csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    doc = json.loads((in_done / "studies/tiny.front.json").read_text())
    assert {r["mask"] for r in rows} == {m["mask"] for m in doc["members"]}


def test_select_command(in_done, capsys):
    doc = json.loads((in_done / "studies/tiny.front.json").read_text())
    full = doc["reference"]["metrics"]["flops"]["value"]
    assert main(["select", "studies/tiny.front.json", "--flops", "60%", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)
    fitting = [m for m in doc["members"] if m["metrics"]["flops"]["value"] <= 0.6 * full]
    best = max(m["metrics"]["accuracy"]["value"] for m in fitting)
    assert chosen["metrics"]["flops"]["value"] <= 0.6 * full
    assert chosen["metrics"]["accuracy"]["value"] == best
    assert doc["members"][chosen["index"]]["mask"] == chosen["mask"]

    # absolute bounds, the study file as FRONT, the checkpoint checked against the front
    assert (
        main(["select", "tiny.toml", "--flops", str(full), "--accuracy", "0", "--checkpoint",
              "studies/checkpoints/tiny"])
        == 0
    )  # fmt: skip
    assert "member" in capsys.readouterr().out

    # nothing fits: one clear line and exit code 2, or the cheapest with --fallback
    assert main(["select", "studies/tiny.front.json", "--flops", "0.0001%"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paretoskip: error: no front member satisfies")
    assert "--fallback cheapest" in err and "Traceback" not in err
    code = main(["select", "studies/tiny.front.json", "--flops", "0.0001%", "--fallback",
                 "cheapest", "--json"])  # fmt: skip
    assert code == 0
    cheapest = json.loads(capsys.readouterr().out)
    assert cheapest["metrics"]["flops"]["value"] == min(
        m["metrics"]["flops"]["value"] for m in doc["members"]
    )
    assert main(["select", "studies/tiny.front.json"]) == 2  # no budget at all
    assert "at least one budget" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("method, suffix", [("torch.export", ".pt2"), ("torchscript", ".pt")])
def test_export_command(in_done, capsys, method, suffix):
    from paretoskip.checkpoint import load_checkpoint
    from paretoskip.export import load_exported
    from paretoskip.measure import count_flops
    from paretoskip.models import apply_mask

    doc = json.loads((in_done / "studies/tiny.front.json").read_text())
    i = len(doc["members"]) - 1  # the cheapest member skips the most
    member = doc["members"][i]
    out = in_done / f"exported-{i}"
    code = main(["export", "tiny.toml", "--member", str(i), "--out", str(out), "--method", method])
    assert code == 0
    printed = capsys.readouterr().out
    assert "(= the front's)" in printed
    path = out.with_suffix(suffix)
    module = load_exported(path)
    assert module.paretoskip_export["mask"] == member["mask"]
    model, _ = load_checkpoint(in_done / "studies/checkpoints/tiny")
    apply_mask(model, member["mask"])
    assert count_flops(model) == member["metrics"]["flops"]["value"]
    x = torch.randn(1, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), model(x))


def test_export_errors(in_done, capsys):
    # a front file alone has no weights
    code = main(["export", "studies/tiny.front.json", "--member", "0", "--out", "x.pt2"])
    assert code == 2 and "--checkpoint" in capsys.readouterr().err
    code = main(["export", "tiny.toml", "--mask", "01", "--out", "x.pt2"])
    assert code == 2 and "9 bits" in capsys.readouterr().err
    code = main(["export", "tiny.toml", "--member", "999", "--out", "x.pt2"])
    assert code == 2 and "members 0 to" in capsys.readouterr().err


def test_plot_command_overlays_studies(in_done, capsys):
    if importlib.util.find_spec("paretoskip.plots") is None:
        pytest.skip("paretoskip/plots.py has not landed yet")
    # a second study on the same database file: the same search, another engine
    (in_done / "tiny-random.toml").write_text(
        STUDY.format(budget=10).replace('name = "tiny"', 'name = "tiny-random"')
        .replace('engine = "pymoo-nsga2"', 'engine = "random"')
        .replace("[search.options]\npop_size = 8\n", "")
        + '\n'
    )  # fmt: skip
    cfg_text = (in_done / "tiny-random.toml").read_text()
    cfg_text = cfg_text.replace(
        "[model]\n", '[model]\ncheckpoint = "studies/checkpoints/tiny"\n'
    ).replace("[model.train]\nepochs = 1\n", "")
    (in_done / "tiny-random.toml").write_text(cfg_text)
    assert main(["search", "tiny-random.toml", "-q"]) == 0
    capsys.readouterr()
    out = in_done / "compare"
    code = main(["plot", "tiny.toml", "tiny-random.toml", "--out", str(out), "--labels", "a,b"])
    assert code == 0
    files = [Path(line) for line in capsys.readouterr().out.split()]
    assert files and all(f.is_file() and f.stat().st_size > 1000 for f in files)
    names = {f.name for f in files}
    assert "tiny_vs_tiny-random-hypervolume.png" in names
    assert "tiny_vs_tiny-random-fronts.png" in names


def test_train_command_adn_recipe_and_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--data", "digits", "--epochs", "1", "--limit", "300", "-q", "--out", "ck/a"]
    assert main([*base, "--model", "resnet20", "--recipe", "adn"]) == 2
    assert "resnet20-adn" in capsys.readouterr().err  # names the accepted models
    assert main([*base, "--model", "resnet20-adn", "--recipe", "nope"]) == 2
    assert "'nope'" in (err := capsys.readouterr().err) and "adn" in err
    bad = [*base, "--model", "resnet20-adn", "--recipe", "adn", "--recipe-option", "alpha=1.5"]
    assert main(bad) == 2
    assert "alpha=1.5" in (err := capsys.readouterr().err) and "[0, 1]" in err
    with pytest.raises(SystemExit) as exc:  # an argparse usage error
        main([*base, "--model", "resnet20-adn", "--recipe-option", "alpha"])
    assert exc.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
    opts = ["--recipe-option", "alpha=0.7", "--recipe-option", "temperature=2", "--threads", "1"]
    assert main([*base, "--model", "resnet20-adn", "--recipe", "adn", *opts]) == 0
    meta = json.loads((tmp_path / "ck/a.json").read_text())
    assert meta["recipe"] == "adn" and meta["training"]["threads"] == 1
    assert meta["training"]["recipe_options"]["alpha"] == 0.7
    assert meta["training"]["recipe_options"]["temperature"] == 2


def test_train_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "resnet20", "--data", "digits", "--epochs", "1", "--limit", "300"]
    args += ["-q"]
    assert main([*args, "--out", "ck/r20", "--recipe", "plain", "--seed", "3"]) == 0
    assert "saved" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ck/r20.json").read_text())
    assert meta["recipe"] == "plain" and meta["training"]["seed"] == 3
    # no silent overwrite
    assert main([*args, "--out", "ck/r20"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["train", "--model", "resnet20", "-q"]) == 2  # --data is missing
    assert "--data" in capsys.readouterr().err


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("paretoskip", "torch", "optuna", "pymoo", "threads", "cpu", "energy meters"):
        assert word in out
    for backend in ("rapl", "nvml", "zeus", "estimated"):
        assert backend in out


def test_help_of_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    top = capsys.readouterr().out
    for command in COMMANDS:
        assert command in top
    for command in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert f"paretoskip {command}" in text and "examples:" in text
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "absent.toml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paretoskip: error: absent.toml") and "Traceback" not in err
    (tmp_path / "bad.toml").write_text('[model]\nname = "resnet20"\n[data]\nname = "digits"\n'
                                       '[search]\nengine = "nsga"\n')  # fmt: skip
    assert main(["search", "bad.toml"]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "search.engine" in err and "pymoo-nsga2" in err
    with pytest.raises(Exception, match="search.engine"):
        main(["search", "bad.toml", "--debug"])  # the traceback, on request


def test_run_without_the_default_study_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "studies/digits-resnet20.toml" in err and "[model]" in err and 'name = "digits"' in err


def test_front_of_a_study_not_run_yet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "new.toml").write_text(STUDY.format(budget=5).replace('"tiny"', '"new"'))
    assert main(["front", "new.toml"]) == 2
    assert "paretoskip run new.toml" in capsys.readouterr().err
    assert not (tmp_path / "studies/new.db").exists()  # looking created nothing


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_saves_the_study_and_run_resumes_it(done, tmp_path):
    work, _ = done
    ckpt = work / "studies/checkpoints/tiny"
    (tmp_path / "big.toml").write_text(
        f'[study]\nname = "big"\n[model]\nname = "resnet20"\ncheckpoint = "{ckpt}"\n'
        '[data]\nname = "digits"\n[search]\nengine = "pymoo-nsga2"\nbudget = 400\n'
        "[search.options]\npop_size = 8\n"
    )
    db = tmp_path / "studies/big.db"
    with open(tmp_path / "err.txt", "w") as err, open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "paretoskip", "run", "big.toml", "--no-plots"],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 240
            while n_trials(db) < 12 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proc.poll() is None, "the search ended before it could be interrupted"
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "err.txt").read_text()
    assert code == 130, stderr[-3000:]
    assert "interrupted" in stderr and "paretoskip run big.toml" in stderr
    assert "Traceback" not in stderr
    saved = n_distinct_masks(db)
    assert 8 <= saved < 400
    assert not (tmp_path / "studies/big.front.json").exists()

    # run again, to a smaller budget so that the test stays fast: it resumes
    result = paretoskip("run", "big.toml", "--no-plots", "--budget", str(saved + 8), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert n_distinct_masks(db) == saved + 8
    assert f"{saved + 8} distinct masks of budget {saved + 8}" in result.stdout
    assert (tmp_path / "studies/big.front.json").is_file()


# --------------------------------------------------------------------------- worker


def test_worker_adds_to_the_study(done, tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("paretoskip.worker") is None:
        pytest.skip("paretoskip/worker.py has not landed yet")
    import shutil

    work, _ = done
    shutil.copytree(work / "studies", tmp_path / "studies")
    shutil.copy(work / "tiny.toml", tmp_path / "tiny.toml")
    monkeypatch.chdir(tmp_path)
    code = main(["worker", "tiny.toml", "--budget", str(BUDGET + 4), "--seed", "1", "-q", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["distinct_masks"] == BUDGET + 4
    assert n_distinct_masks(tmp_path / "studies/tiny.db") == BUDGET + 4
