"""The ``paretoskip`` command line.

``paretoskip run`` trains the default digits model if needed, searches its skip
configurations, writes the front file and the plots.  Every subcommand has ``--help`` with
examples; ``paretoskip --help`` lists them.

Exit codes: 0 success, 2 a usage or input error (one line on stderr; ``--debug`` shows the
traceback), 130 interrupted by Ctrl-C (a study is saved as far as it got, and ``paretoskip
run STUDY`` resumes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, ParetoSkipError

__all__ = ["main", "build_parser"]

log = logging.getLogger("paretoskip.cli")

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

# --------------------------------------------------------------------------- output


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear tqdm progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm

                tqdm.write(msg, file=sys.stderr)
            except ImportError:  # pragma: no cover
                print(msg, file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _setup_logging(quiet: bool, debug: bool) -> Callable[[], None]:
    """Log paretoskip's INFO lines (WARNING with --quiet) to stderr, optuna's warnings only.

    Returns a function that puts the logging state back (for in-process callers of main).
    """
    logger = logging.getLogger("paretoskip")
    saved = (logger.level, logger.propagate)
    handler = _TqdmHandler()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    optuna_level = None
    try:
        import optuna

        optuna_level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    except ImportError:  # pragma: no cover
        pass

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if optuna_level is not None:
            import optuna

            optuna.logging.set_verbosity(optuna_level)

    return restore


def _out(text: str = "") -> None:
    print(text, flush=True)


def _percent_or_number(text: str) -> float | str:
    t = text.strip()
    if t.endswith("%"):
        return t
    try:
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number (absolute bound) nor a percentage such as '50%'"
        ) from None


def _size(text: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a fraction such as 0.2 or a count such as 300"
        ) from None


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} must be >= {minimum}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def _key_value(text: str) -> tuple[str, Any]:
    """An argparse type: ``KEY=VALUE``; the value is read as TOML (``0.5``, ``true``, ``"x"``),
    a bare word as a string."""
    from .config import toml_module

    tomllib = toml_module()
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, e.g. alpha=0.5")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


# --------------------------------------------------------------------------- resolving inputs


def _resolve_study(arg: str | None) -> Path:
    """The study file named on the command line (or the default study)."""
    from .config import DEFAULT_STUDY, MINIMAL_STUDY

    if arg is None:
        path = Path(DEFAULT_STUDY)
        if not path.is_file():
            raise ConfigError(
                f"the default study {DEFAULT_STUDY} is not in the working directory {os.getcwd()}.\n"
                "Run `paretoskip run` from the root of a paretoskip checkout (the file ships in "
                "its studies/ folder), or pass a study file: `paretoskip run path/to/study.toml`.\n"
                f"A minimal study file (save it as {DEFAULT_STUDY}):\n\n{MINIMAL_STUDY}"
            )
        return path
    path = Path(arg)
    if not path.exists() and path.suffix == "" and (Path("studies") / f"{arg}.toml").is_file():
        return Path("studies") / f"{arg}.toml"
    return path


def _load_cfg(arg: str | None, *, check_files: bool = True):
    from .config import load_study_config

    return load_study_config(_resolve_study(arg), check_files=check_files)


def _pipeline(arg: str | None, *, check_files: bool = True, **overrides: Any):
    from .pipeline import StudyPipeline

    cfg = _load_cfg(arg, check_files=check_files)
    return StudyPipeline(cfg.replace(**overrides) if overrides else cfg)


def _load_front(arg: str):
    """(Front, source text, StudyPipeline or None) for a front JSON, a study TOML or a .db file."""
    from .front import Front

    path = Path(arg)
    if path.suffix == ".json":
        return Front.load(path), str(path), None
    if path.suffix == ".db":
        if not path.is_file():
            raise ConfigError(f"study database {path} does not exist")
        from .study import StudyDB

        return Front.from_study(StudyDB.read(path)), str(path), None
    pipe = _pipeline(arg, check_files=False)
    return pipe.front(), str(pipe.cfg.source), pipe


def _checkpoint_for(args: argparse.Namespace, pipe) -> str | None:
    if args.checkpoint is not None:
        return args.checkpoint
    if pipe is not None:
        return pipe.cfg.model.checkpoint
    return None


# --------------------------------------------------------------------------- run / search


def _describe_cfg(cfg) -> str:
    s = cfg.search
    parts = [
        f"study {cfg.name}: {cfg.model.name} on {cfg.data.name}",
        f"engine {s.engine}",
        f"budget {s.budget if s.budget is not None else 'default'}",
        f"objectives {', '.join(s.objectives)}",
    ]
    if s.constraints:
        parts.append(f"constraints {'; '.join(s.constraints)}")
    return ", ".join(parts)


def _resume_command(args: argparse.Namespace, cfg) -> str:
    """The command that continues this run (with the overrides that change what it does)."""
    parts = ["paretoskip", "run"]
    if getattr(args, "study", None) is not None:
        parts.append(str(cfg.source))
    for flag in ("storage", "budget", "engine", "seed", "device", "fidelity"):
        value = getattr(args, flag, None)
        if value is not None:
            parts += [f"--{flag}", str(value)]
    for flag in ("screen_fraction", "screen_k", "screen_rungs"):
        value = getattr(args, flag, None)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return " ".join(parts)


def _interrupted_message(args: argparse.Namespace, cfg, stage: str) -> None:
    print(file=sys.stderr)
    again = _resume_command(args, cfg)
    if stage == "loading":
        print("interrupted before the search started; nothing was changed.", file=sys.stderr)
        return
    if stage == "training":
        print(
            f"interrupted during training: no checkpoint was saved; `{again}` trains again "
            "from the start.",
            file=sys.stderr,
        )
        return
    count = ""
    try:
        from .pipeline import StudyPipeline

        db = StudyPipeline(cfg).open_study()
        count = f" ({len(db.evaluated_masks())} distinct masks evaluated)"
    except Exception:  # noqa: BLE001 - best effort, the message matters more
        pass
    print(
        f"interrupted: the study {cfg.name} is saved in {cfg.storage}{count}; `{again}` "
        "resumes it.",
        file=sys.stderr,
    )


def _search_study(args: argparse.Namespace, *, plots: bool) -> int:
    started = time.monotonic()
    pipe = _pipeline(
        getattr(args, "study", None),
        budget=args.budget,
        engine=args.engine,
        timeout=args.timeout,
        storage=args.storage,
        seed=args.seed,
        device=args.device,
        fidelity=args.fidelity,
        screen_fraction=args.screen_fraction,
        screen_k=args.screen_k,
        screen_rungs=args.screen_rungs,
    )
    cfg = pipe.cfg
    progress = not args.quiet
    log.info("%s", _describe_cfg(cfg))
    stage = "loading"
    try:
        pipe.data()
        stage = "training" if pipe.needs_training() else "loading"
        pipe.model(progress=progress)
        stage = "searching"
        pipe.evaluator()
        log.info("study database %s", cfg.location.redacted)
        front = pipe.search(progress=progress)
    except KeyboardInterrupt:
        _interrupted_message(args, cfg, stage)
        return EXIT_INTERRUPTED

    json_path, csv_path = front.save(pipe.front_path(args.out))
    status = EXIT_OK
    plot_files: list[Path] = []
    plot_note = ""
    if plots and not args.no_plots:
        # next to the front file (studies/plots/ by default): never the tracked plots/
        plot_dir = Path(args.plots) if args.plots else json_path.parent / "plots"
        try:
            plot_files = pipe.plot(front, plot_dir)
        except ImportError as exc:
            plot_note = f"skipped ({exc})"
            log.warning("plots skipped: %s", exc)
        except Exception as exc:
            if args.debug:
                raise
            plot_note = f"FAILED ({type(exc).__name__}: {exc})"
            status = EXIT_ERROR
            log.error(
                "the plots failed (%s: %s); the study and the front file are written. "
                "`paretoskip plot %s --debug` shows the traceback.",
                type(exc).__name__,
                exc,
                cfg.source,
            )
        except KeyboardInterrupt:
            print(
                f"\ninterrupted while plotting; the study and the front file are written; "
                f"`paretoskip plot {cfg.source}` draws the plots.",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if plot_files:
            pngs = [p.name for p in plot_files if p.suffix == ".png"]
            plot_note = (
                f"{_common_dir(plot_files)} ({len(plot_files)} files: {', '.join(pngs)}, ...)"
            )
    elif plots:
        plot_note = "skipped (--no-plots)"

    _out(front.table(strict_only=True))
    _out()
    run = front.data["study"].get("run", {})
    evals = front.data["study"].get("distinct_masks")
    if isinstance(evals, int):  # masks dropped after screening count in the budget too
        evals += int(front.data["study"].get("screened_masks") or 0)
    _out(
        f"study       {cfg.name}: {evals} distinct masks of budget {front.data['study'].get('budget')} "
        f"({run.get('new_evaluations', 0)} evaluated now, {run.get('cache_hits', 0)} from the "
        f"cache) in {time.monotonic() - started:.0f} s; hypervolume {front.hypervolume:.4f}"
    )
    if run.get("fidelity") == "multi":
        _out(
            f"fidelity    multi: {run.get('screened_out', 0)} candidates dropped after screening on "
            f"{' then '.join(map(str, run.get('screen_rung_images') or [run.get('screen_images')]))}"
            f" of {run.get('validation_images')} validation images, "
            f"{run.get('promoted', 0)} finished on all; {run.get('image_evaluations', 0)} "
            "image-evaluations this run"
        )
    budget = front.data["study"].get("budget")
    if isinstance(evals, int) and isinstance(budget, int) and evals < budget:
        from .space import SkipSpace

        if evals < SkipSpace.from_dict(front.data["space"]).size:
            _out(
                f"            stopped before the budget (timeout?): `{_resume_command(args, cfg)}` "
                "continues"
            )
    _out(f"database    {cfg.location.redacted}")
    ref = front.reference
    ref_acc = ref["metrics"].get("accuracy", {}).get("value")
    test = ref.get("test_accuracy")
    _out(
        f"checkpoint  {cfg.model.checkpoint} (full model: val acc "
        f"{_fmt(ref_acc)}, test acc {_fmt(test)})"
    )
    strict = len(front.strict_members())
    _out(f"front       {json_path}  {csv_path}  ({len(front)} members, {strict} strict)")
    if plot_note:
        _out(f"plots       {plot_note}")
    _out(f"next        paretoskip select {json_path} --flops 50%")
    return status


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _common_dir(paths: Sequence[Path]) -> str:
    try:
        return os.path.commonpath([str(Path(p).parent) for p in paths]) + os.sep
    except ValueError:
        return ", ".join(map(str, paths))


def cmd_run(args: argparse.Namespace) -> int:
    return _search_study(args, plots=True)


def cmd_search(args: argparse.Namespace) -> int:
    return _search_study(args, plots=False)


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import DEFAULT_TRAINING, train_checkpoint

    if args.study is not None:
        if args.model is not None or args.data is not None:
            raise ConfigError(
                "--model and --data come from the study file; give either a study file or them"
            )
        pipe = _pipeline(args.study, check_files=False)
        model_name, model_kwargs, out, settings = pipe.train_settings()
        out = args.out or out
        data_loader, data_name = pipe.data, pipe.cfg.data.name
    else:
        if args.model is None or args.data is None:
            raise ConfigError(
                "give a study file (`paretoskip train studies/x.toml`) or both --model and --data"
            )
        if args.out is None:
            raise ConfigError("--out is required without a study file (where the checkpoint goes)")
        from .config import DataSection
        from .models import list_models
        from .pipeline import load_data

        model_name, model_kwargs, out, data_name = args.model, {}, args.out, args.data
        settings = dict(DEFAULT_TRAINING)
        if model_name not in list_models():
            raise ConfigError(
                f"unknown model {model_name!r}; available: {', '.join(list_models())}"
            )

        section = DataSection(
            name=args.data,
            root=args.data_root,
            split_seed=args.split_seed,
            val_size=args.val_size,
            test_size=args.test_size,
            limit=args.limit,
            input_size=args.input_size,
        )

        def data_loader():
            return load_data(section)

    for key in ("recipe", "epochs", "batch_size", "lr", "seed", "p_last", "device", "threads"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.recipe_option:
        settings["recipe_options"] = {
            **settings.get("recipe_options", {}),
            **dict(args.recipe_option),
        }
    try:
        result = train_checkpoint(
            model_name,
            data_loader,
            out,
            model_kwargs=model_kwargs,
            settings=settings,
            force=args.force,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print("\ninterrupted: training stopped, no checkpoint was saved.", file=sys.stderr)
        return EXIT_INTERRUPTED
    _out(
        f"saved {result.checkpoint} (+ .json): {model_name} on {data_name}, "
        f"{settings.get('recipe')}, {result.epochs} epochs in {result.seconds:.0f} s; "
        f"val acc {result.val_accuracy:.4f}, test acc {result.test_accuracy:.4f}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- front / plot


def cmd_front(args: argparse.Namespace) -> int:
    front, source, _ = _load_front(args.front)
    if args.csv:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            _, csv_path = front.save(Path(tmp) / "front.json")
            sys.stdout.write(csv_path.read_text())
        return EXIT_OK
    if args.json:
        from .front import clean_json

        _out(json.dumps(clean_json(front.data), indent=2))
        return EXIT_OK
    study = front.data.get("study", {})
    objs = ", ".join(f"{o.name} ({o.direction[:3]}, {o.unit})" for o in front.objectives)
    _out(
        f"{source}: study {study.get('name')}, engine {study.get('engine')}, "
        f"{study.get('distinct_masks')} distinct masks; objectives {objs}"
    )
    _out(front.table(strict_only=args.strict))
    return EXIT_OK


def _open_study(arg: str):
    """The StudyDB of a study file (.toml) or a .db file (which must exist)."""
    from .study import StudyDB

    path = Path(arg)
    if path.suffix == ".db":
        if not path.is_file():
            raise ConfigError(f"study database {path} does not exist")
        return StudyDB.load(path)
    return _pipeline(arg, check_files=False).open_study()


def _families_in(path: Path) -> list[dict[str, Any]]:
    """The families a JSON file holds: one family, a list of them, or a document with a
    ``families`` list (whose ``backbone.weights_fingerprint`` fills in a family's missing
    provenance, as benchmarks/dynamic.py writes it)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"family file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"family file {path} is not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and "families" in doc:
        fams = doc["families"]
        weights = (doc.get("backbone") or {}).get("weights_fingerprint")
        if weights and isinstance(fams, list):
            fams = [
                {**f, "provenance": {"weights_fingerprint": weights, **(f.get("provenance") or {})}}
                if isinstance(f, dict)
                else f
                for f in fams
            ]
    elif isinstance(doc, dict) and "members" in doc and "name" in doc:
        fams = [doc]
    else:
        fams = doc
    if not isinstance(fams, list) or not fams:
        raise ConfigError(
            f"family file {path} holds no families: expected a family (an object with name and "
            "members), a list of them, or an object with a non-empty 'families' list"
        )
    return fams


def cmd_family(args: argparse.Namespace) -> int:
    db = _open_study(args.study)
    if args.action == "list":
        if args.what or args.name:
            raise ConfigError("`family list` takes only the study")
        fams = db.families()
        if not fams:
            _out(f"study {db.name}: no families attached")
        for f in fams:
            pts = f["members"]
            _out(
                f"{f['name']:<24} {f.get('kind', '?'):<8} {len(pts):>3} points, "
                f"cost basis {f.get('cost_basis', '?')}: {f.get('label', '')}"
            )
        return EXIT_OK
    if not args.what:
        what = "JSON files" if args.action == "add" else "family names"
        raise ConfigError(f"`family {args.action}` needs {what} after the study")
    if args.action == "remove":
        missing = [n for n in args.what if not db.remove_family(n)]
        if missing:
            have = ", ".join(f["name"] for f in db.families()) or "none"
            raise ConfigError(f"study {db.name} has no family {missing}; it has: {have}")
        _out(f"removed {', '.join(args.what)} from study {db.name}")
        return EXIT_OK
    fams = [f for arg in args.what for f in _families_in(Path(arg))]
    if args.name:
        names = [f.get("name") for f in fams if isinstance(f, dict)]
        unknown = sorted(set(args.name) - set(names))
        if unknown:
            raise ConfigError(f"--name {unknown}: not in the files; they hold {names}")
        fams = [f for f in fams if f.get("name") in args.name]
    for f in fams:
        stored = db.set_family(f, force=args.force)
        _out(f"attached {stored['name']} ({len(stored['members'])} points) to study {db.name}")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from .front import Front
    from .pipeline import plot_front

    loaded = []
    for arg in args.studies:
        path = Path(arg)
        if path.suffix == ".json":
            front = Front.load(path)
        elif path.suffix == ".db":
            front = Front.from_study(_open_study(arg))
        else:
            front = _pipeline(arg, check_files=False).front()
        loaded.append(front)
    files: list[Path] = []
    names = [
        f.study.name if f.study is not None else f.data.get("study", {}).get("name") or Path(a).stem
        for f, a in zip(loaded, args.studies)
    ]
    labels = args.labels.split(",") if args.labels else names
    if len(labels) != len(loaded):
        raise ConfigError(f"--labels gives {len(labels)} labels for {len(loaded)} studies")
    if args.out:
        out = Path(args.out)
    elif Path(args.studies[0]).suffix in (".db", ".json"):
        out = Path(args.studies[0]).parent / "plots"
    else:  # next to the first study's front file (studies/plots/ by default)
        out = _pipeline(args.studies[0], check_files=False).front_path(None).parent / "plots"
    for front, arg in zip(loaded, args.studies):
        if front.study is not None:
            files += plot_front(front, out)
        elif len(loaded) == 1:  # a front file: no study for the pairs, the overlay only
            from .plots import plot_fronts
            from .plots._common import safe_name

            name = safe_name(front.data.get("study", {}).get("name") or Path(arg).stem)
            files += plot_fronts(front, out / f"{name}_fronts")
    if len(loaded) > 1:
        from .plots import plot_fronts, plot_hypervolume

        stem = "_vs_".join(names)
        if all(f.study is not None for f in loaded):  # a front file has no trial history
            files += plot_hypervolume(
                [f.study for f in loaded], out / f"{stem}-hypervolume", labels=labels
            )
        files += plot_fronts(loaded, out / f"{stem}-fronts", labels=labels)
    for f in files:
        _out(str(f))
    return EXIT_OK


# --------------------------------------------------------------------------- select / export


def _member_lines(front, i: int, member: dict[str, Any]) -> list[str]:
    from .metrics import METRICS

    ref = {k: v.get("value") for k, v in front.reference["metrics"].items()}
    lines = [f"member {i}: mask {member['mask']} ({'strict' if member['strict'] else 'band'})"]
    lines.append(f"  skipped   {', '.join(member['skipped']) or '(none: the full model)'}")
    for name, m in member["metrics"].items():
        v = m.get("value")
        if v is None:
            lines.append(f"  {name:<9} n/a ({m.get('source')}: {m.get('reason', '')})")
            continue
        rel = ""
        spec = METRICS.get(name)
        if not (spec is not None and spec.is_fraction) and ref.get(name):
            rel = f" ({v / ref[name]:.1%} of the full model)"
        spread = f" ± {m['spread']:.3g}" if m.get("spread") else ""
        lines.append(f"  {name:<9} {v:.6g}{spread} {m.get('unit', '')}{rel}  [{m.get('source')}]")
    if member.get("test_accuracy") is not None:
        lines.append(f"  test acc  {member['test_accuracy']:.4f}")
    return lines


def _check_bound(name: str, bound: float | str) -> None:
    """Refuse a bound no member can meet by its form: a fraction (accuracy) outside [0, 1], a
    cost or percentage that is not > 0."""
    from .metrics import METRICS

    sep = " " if name in METRICS and METRICS[name].budget_help else "="
    flag = f"--{name}" if sep == " " else f"--budget {name}"
    if isinstance(bound, str):
        try:
            v = float(bound.rstrip("%"))
        except ValueError:
            raise ConfigError(f"{flag}{sep}{bound}: not a percentage such as '50%'") from None
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{flag}{sep}{bound}: a percentage of the full model must be > 0%")
        return
    spec = METRICS.get(name)
    if not math.isfinite(bound):
        raise ConfigError(f"{flag}{sep}{bound}: give a finite number")
    if spec is not None and spec.is_fraction:
        if not 0.0 <= bound <= 1.0:
            hint = f" (did you mean {bound / 100:g}?)" if 1.0 < bound <= 100.0 else ""
            raise ConfigError(
                f"{flag}{sep}{bound:g}: {name} is a fraction, give a bound in [0, 1]{hint}"
            )
    elif (spec is None or spec.direction == "minimize") and not bound > 0:
        raise ConfigError(f"{flag}{sep}{bound:g}: a cost bound must be > 0")


def cmd_select(args: argparse.Namespace) -> int:
    from .errors import BudgetError
    from .metrics import budget_names
    from .pipeline import model_for_front
    from .runtime import AdaptiveModel

    front, _, pipe = _load_front(args.front)
    budgets: dict[str, float | str] = {}
    for name in budget_names():
        value = getattr(args, name)
        if value is not None:
            budgets[name] = value
    for item in args.budget or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--budget {item!r}: write METRIC=VALUE, e.g. latency_ratio=0.6")
        budgets[name.strip()] = _percent_or_number(value)
    if not budgets:
        raise ConfigError(
            "give at least one budget, e.g. --flops 50% --accuracy 0.95 (see `paretoskip select --help`)"
        )
    for name, bound in budgets.items():
        _check_bound(name, bound)
    ckpt = _checkpoint_for(args, pipe)
    if ckpt is not None and args.checkpoint is None:
        from .checkpoint import checkpoint_paths

        if not checkpoint_paths(ckpt)[0].is_file():
            ckpt = None  # the study's checkpoint is not needed for choosing
    model = model_for_front(front, ckpt, need_weights=False)
    adaptive = AdaptiveModel(model, front.data)
    try:
        member = adaptive.select(fallback=args.fallback, **budgets)
    except BudgetError as exc:
        raise BudgetError(
            str(exc).replace("pass fallback='cheapest'", "pass --fallback cheapest")
        ) from None
    i = adaptive.current_index
    if args.json:
        _out(json.dumps({"index": i, **member}, indent=2))
    else:
        for line in _member_lines(front, i, member):
            _out(line)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    import warnings

    from .export import export_file, resolve_format
    from .measure import count_flops
    from .models import apply_mask
    from .pipeline import model_for_front, resolve_member

    fmt, out = resolve_format(args.out, args.format)  # refuse a contradiction before any work
    front, _, pipe = _load_front(args.front)
    mask, entry = resolve_member(front, member=args.member, mask=args.mask)
    model = model_for_front(front, _checkpoint_for(args, pipe), need_weights=True, force=args.force)
    check = sorted({1, 8, args.batch_size}) if not args.static_batch else [args.batch_size]
    example = None
    if args.static_batch:
        import torch

        shape = tuple(model.input_shape)
        example = torch.randn(args.batch_size, *shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        # torch.jit.* announce their deprecation on every call; the user chose TorchScript
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        r = export_file(
            model,
            {**(entry or {}), "mask": mask},
            out,
            format=fmt,
            example_input=example,
            dynamic_batch=not args.static_batch,
            provenance=front.data.get("provenance"),
            check_batch_sizes=check,
        )
    meta = r.metadata
    skipped = meta["skipped"]
    _out(f"wrote {r.path} ({r.format}, input {meta['input']['shape']}) and {r.sidecar}")
    _out(f"  mask      {meta['mask']}, skips {len(skipped)} units: {', '.join(skipped) or 'none'}")
    if entry is not None:
        acc = entry.get("metrics", {}).get("accuracy", {}).get("value")
        _out(f"  front     val acc {_fmt(acc)}, test acc {_fmt(entry.get('test_accuracy'))}")
    apply_mask(model, mask)
    counted = count_flops(model)
    flops = (entry or {}).get("metrics", {}).get("flops", {}).get("value")
    same = (
        ""
        if flops is None
        else (" (= the front's)" if counted == flops else f" (front: {flops:.6g})")
    )
    _out(f"  flops     {counted:.6g} per image{same}")
    norm = meta["input"]["normalization"]
    if norm is not None:
        _out(f"  input     normalise with mean {norm.get('mean')}, std {norm.get('std')}")
    diffs = ", ".join(f"batch {b}: {d:.3g}" for b, d in sorted(r.max_abs_diff.items()))
    _out(f"  check     max |exported - masked model| on random input ({diffs})")
    return EXIT_OK


# --------------------------------------------------------------------------- info / worker


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from . import __version__
    from .data import DATASETS, DEFAULT_ROOTS
    from .energy import probe_energy_meters
    from .measure import hardware_info
    from .models import list_models
    from .search import ENGINES

    hw = hardware_info()
    _out(f"paretoskip  {__version__}")
    _out(f"python      {platform.python_version()} ({sys.executable})")
    for mod in ("torch", "torchvision", "optuna", "pymoo", "moocore", "numpy", "sqlalchemy"):
        _out(f"{mod:<11} {_version(mod)}")
    for mod in ("optuna-dashboard", "nvidia-ml-py", "zeus", "psycopg", "pymysql", "dask"):
        v = _version(mod)
        if v != "not installed":
            _out(f"{mod:<11} {v}")
    _out()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    _out(f"cpu         {hw['cpu']} ({hw['machine']}, {hw['system']})")
    _out(f"cores       {os.cpu_count()} logical, {affinity} usable by this process")
    _out(
        f"threads     torch intra-op {torch.get_num_threads()}, inter-op "
        f"{torch.get_num_interop_threads()}"
        + (
            f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
            if "OMP_NUM_THREADS" in os.environ
            else ""
        )
    )
    _out(f"cuda        {'available' if torch.cuda.is_available() else 'not available'}")
    _out()
    _out("energy meters (measure.energy in a study file):")
    for row in probe_energy_meters():
        mark = "yes" if row["ok"] else "no "
        _out(f"  {row['backend']:<10} {mark}  {row['detail']}")
    _out()
    _out(f"models      {', '.join(list_models())}")
    found = []
    for name in DATASETS:
        roots = DEFAULT_ROOTS.get(name)
        if roots:
            here = any(Path(r).exists() for r in roots)
            found.append(f"{name} ({'found' if here else 'not found'} at {', '.join(roots)})")
        else:
            found.append(name)
    _out(f"datasets    {'; '.join(found)}")
    _out(f"engines     {', '.join(ENGINES)}")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    pipe = _pipeline(
        args.study, storage=args.storage, budget=args.budget, seed=args.seed, device=args.device
    )
    try:
        summary = pipe.worker(
            engine=args.engine, seed=args.seed, timeout=args.timeout, progress=not args.quiet
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: this worker's finished evaluations are in {pipe.cfg.storage}; "
            "start it again to go on.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if args.json:
        _out(json.dumps(summary, indent=2, default=str))
    else:
        _out(
            f"worker {summary.get('worker')} ({summary.get('engine')}, seed {summary.get('seed')}): "
            f"{summary.get('new_evaluations')} new evaluations, {summary.get('cache_hits')} from "
            f"the cache, in {summary.get('seconds', 0):.0f} s; the study {pipe.name} holds "
            f"{summary.get('distinct_masks')} distinct masks (budget {pipe.cfg.search.budget})"
        )
    return EXIT_OK


# --------------------------------------------------------------------------- parser

_DESCRIPTION = """\
Find the accuracy / FLOPs / latency / energy Pareto front of skip configurations of
residual networks, and switch between them at run time.

Start with `paretoskip run`: it trains the default digits ResNet-20 (stochastic depth) if
its checkpoint is missing, searches, and writes the front file and plots."""

_EPILOG = """\
examples:
  paretoskip run                                   # the default study (digits ResNet-20)
  paretoskip run studies/fashion-mnist-resnet56.toml --budget 400
  paretoskip front studies/digits-resnet20.front.json
  paretoskip select studies/digits-resnet20.front.json --flops 50%
  paretoskip info

`paretoskip COMMAND --help` shows each command's options and examples."""

_HELP: dict[str, tuple[str, str]] = {
    "run": (
        "train if needed, search, write the front file and plots",
        """\
Runs a whole study: loads the data, trains the model when its checkpoint is missing,
searches (resuming the study database up to the budget), writes the front file
(<storage dir>/<name>.front.json and .csv, or under --out) and the plots (a plots/ folder
next to the front file, e.g. studies/plots/, or
--plots DIR; PNG and PDF, named after the study), and prints the front.  Ctrl-C keeps every finished evaluation: run the
same command again to resume.

examples:
  paretoskip run                                        # studies/digits-resnet20.toml
  paretoskip run studies/fashion-mnist-resnet56.toml
  paretoskip run fashion-mnist-resnet56                 # same: looks in studies/
  paretoskip run studies/digits-resnet20.toml --budget 300 --engine nsga2
  paretoskip run my.toml --storage postgresql+psycopg://user@host/db --no-plots""",
    ),
    "train": (
        "train a skippable model and save its checkpoint",
        """\
Trains with stochastic depth (or plainly) and writes <out>.safetensors + <out>.json.
With a study file, its [model], [model.train] and [data] settings are used and the
checkpoint goes to its model.checkpoint; options override them.

examples:
  paretoskip train --model resnet20 --data digits --recipe stochastic-depth --epochs 30 \\
      --out studies/checkpoints/digits-resnet20-sd
  paretoskip train --model resnet56 --data fashion-mnist --limit 12000 --epochs 15 \\
      --out studies/checkpoints/fm-r56
  paretoskip train studies/digits-resnet20.toml --force     # retrain the study's model""",
    ),
    "search": (
        "search a study (train if needed) and write its front file, no plots",
        """\
Like `run` without the plots.  Resumes the study up to its budget.

examples:
  paretoskip search studies/digits-resnet20.toml
  paretoskip search studies/digits-resnet20.toml --budget 400 --timeout 600""",
    ),
    "front": (
        "print the front of a study or front file as a table",
        """\
Reads a front file (.json), a study file (.toml; the front is read from its database) or a
study database (.db).  The '#' column is the member number `select` and `export` use.

examples:
  paretoskip front studies/digits-resnet20.front.json
  paretoskip front studies/digits-resnet20.toml
  paretoskip front studies/digits-resnet20.toml --csv > front.csv""",
    ),
    "plot": (
        "draw the plots of one or several studies",
        """\
Each study: every pair of objectives, hypervolume against evaluations and the units the
front skips, as <name>_*.png and .pdf in studies/plots/ (next to the first study's front
file; or --out DIR).  A study with families of operating points attached (per-input gated
or dual-mode sweeps, `paretoskip family add`): also its static front and every family
overlaid (<name>_families, and <name>_families-test against test accuracy), the families'
costs labelled as means per input.  Several studies: also their hypervolume curves and
fronts overlaid (<name1>_vs_<name2>-hypervolume, -fronts), families included.  A front
file (.json) is drawn as it is: its fronts-and-families overlay only.

examples:
  paretoskip plot studies/digits-resnet20.toml
  paretoskip plot studies/digits-resnet20.toml studies/digits-resnet20-plain.toml \\
      --labels "stochastic depth,plain" """,
    ),
    "family": (
        "attach, list or remove families of operating points of a study",
        """\
A family is a sweep of operating points of the study's model that is not a static skip
configuration: per-input gated models at several compute targets, or the dual mode under
several hard budgets (paretoskip.dynamic.dynamic_family writes them; benchmarks/dynamic.py
writes them under "families" of its JSON).  Attached families live in the study database:
every front extraction and front file carries them, and `paretoskip plot` overlays them on
the static front.  FILE is a family, a list of families, or a document with a "families"
list (a front file, a benchmarks/dynamic.py result).  A family made from other weights
than the study's model (its provenance.weights_fingerprint) is refused unless --force.

examples:
  paretoskip family add studies/fashion-mnist-resnet20.toml benchmarks/results/dynamic.json
  paretoskip family list studies/fashion-mnist-resnet20.toml
  paretoskip family remove studies/fashion-mnist-resnet20.toml dual""",
    ),
    "select": (
        "choose the most accurate front member within budgets",
        """\
Prints the most accurate member that fits every budget.  A number is an absolute bound in
the metric's unit (FLOPs per image, seconds per batch, joules, fraction); '50%' is relative
to the full model.  Accuracy is a lower bound, every other metric an upper bound.

examples:
  paretoskip select studies/digits-resnet20.front.json --flops 50%
  paretoskip select studies/digits-resnet20.toml --flops 60% --accuracy 0.9
  paretoskip select front.json --checkpoint ckpt/r56 --latency 0.002 --fallback cheapest
  paretoskip select front.json --budget latency_ratio=0.6 --json""",
    ),
    "export": (
        "export one configuration as a deployable file without its skipped blocks",
        """\
Writes one front member (its number in `paretoskip front`) or any mask as a file a device
runs without paretoskip: torch.export (.pt2), TorchScript (.pt), ONNX (.onnx, needs the
'onnx' extra) or IREE for the CPU (.vmfb, needs the 'iree' extra), chosen by --format or
the suffix of --out (a contradiction is refused).  The batch dimension is dynamic.  Next to
the file, <file>.json records the input shape and normalisation, the mask, the member's
metrics and the model fingerprint (also embedded in the file).  The file is loaded with its
own runtime and checked against the masked model at batch 1 and 8.  The weights come from
--checkpoint, or from the study's checkpoint when FRONT is a study file.

examples:
  paretoskip export studies/digits-resnet20.toml --member 3 --out exports/r20-m3.onnx
  paretoskip export studies/digits-resnet20.toml --member 3 --out exports/r20-m3.vmfb
  paretoskip export front.json --checkpoint studies/checkpoints/digits-resnet20 \\
      --mask 010000100 --format torchscript --out exports/r20.pt""",
    ),
    "info": (
        "versions, threads, CPU, and which energy meters can read here",
        """\
examples:
  paretoskip info""",
    ),
    "worker": (
        "add a search worker to a shared study database",
        """\
Runs one more worker on the study's database (PostgreSQL, MySQL or Redis for several
machines; SQLite for processes of one machine) with an Optuna sampler.  The checkpoint
must exist (train it once with `paretoskip train STUDY`).

examples:
  paretoskip worker studies/digits-resnet20.toml --storage postgresql+psycopg://u@db/ps
  paretoskip worker studies/digits-resnet20.toml --storage sqlite:///studies/digits-resnet20.db \\
      --engine tpe --budget 400 --seed 2""",
    ),
}


def _common_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars or log lines",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging, and a traceback on errors",
    )
    return p


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=_positive_int, help="distinct masks to evaluate in the study")
    p.add_argument("--engine", help="search engine (see `paretoskip info`)")
    p.add_argument("--timeout", type=_positive_float, help="stop this run after so many seconds")
    p.add_argument("--storage", help="study database: a path (SQLite) or URL")
    p.add_argument("--seed", type=_nonneg_int, help="engine seed")
    p.add_argument("--out", help="front file (.json) or the folder for <name>.front.json")
    p.add_argument(
        "--fidelity",
        choices=("full", "multi"),
        help="multi: screen candidates on a stratified validation subset first and finish "
        "only those not clearly dominated on the whole split (default: the study file's, full)",
    )
    p.add_argument(
        "--screen-fraction",
        type=float,
        metavar="F",
        help="share of the validation split in the largest screening subset (fidelity multi; "
        "default 0.8)",
    )
    p.add_argument(
        "--screen-k",
        type=float,
        metavar="K",
        help="standard errors by which a screened candidate must fall short to be dropped "
        "(fidelity multi; default 2)",
    )
    p.add_argument(
        "--screen-rungs",
        type=int,
        metavar="R",
        help="nested subsets a candidate passes before the whole split, each twice the one "
        "before (fidelity multi; default 5: 5, 10, 20, 40, 80%% of each class)",
    )
    _device_option(p)


def _device_option(p: argparse.ArgumentParser, what: str = "evaluated, timed and metered") -> None:
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"where the model is {what}: cpu, cuda or cuda:N (overrides the study file)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``paretoskip``."""
    from . import __version__

    common = _common_parent()
    parser = argparse.ArgumentParser(
        prog="paretoskip",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"paretoskip {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    parser.add_argument("--debug", action="store_true", help="debug logging, tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str) -> argparse.ArgumentParser:
        summary, epilog = _HELP[name]
        return sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )

    p = add("run")
    p.add_argument(
        "study",
        nargs="?",
        metavar="STUDY",
        help="study file (default studies/digits-resnet20.toml)",
    )
    _search_options(p)
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="folder for the plots (default: plots/ next to the front file)",
    )
    p.add_argument("--no-plots", action="store_true", help="do not draw plots")
    p.set_defaults(func=cmd_run)

    p = add("search")
    p.add_argument("study", metavar="STUDY", help="study file (.toml)")
    _search_options(p)
    p.set_defaults(func=cmd_search)

    p = add("train")
    p.add_argument("study", nargs="?", metavar="STUDY", help="take the settings from a study file")
    p.add_argument("--model", help="architecture, e.g. resnet20 (see `paretoskip info`)")
    p.add_argument("--data", help="dataset: digits, fashion-mnist, cifar10, cifar100, imagefolder")
    p.add_argument("--data-root", help="where the dataset files are")
    p.add_argument(
        "--recipe", help="stochastic-depth (default), plain, adn, or another registered recipe"
    )
    p.add_argument(
        "--recipe-option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a recipe option, e.g. alpha=0.5 or temperature=2 for adn (repeatable)",
    )
    p.add_argument("--threads", type=_positive_int, help="torch threads (recorded)")
    p.add_argument("--epochs", type=_nonneg_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float, help="peak learning rate")
    p.add_argument(
        "--p-last", type=_positive_float, help="stochastic-depth survival of the last block"
    )
    p.add_argument("--seed", type=_nonneg_int, help="training seed (weights, shuffling)")
    p.add_argument("--split-seed", type=_nonneg_int, default=0, help="seed of the data split")
    p.add_argument("--val-size", type=_size, default=0.2, help="fraction or count (default 0.2)")
    p.add_argument("--test-size", type=_size, default=0.2, help="fraction or count (default 0.2)")
    p.add_argument("--limit", type=_positive_int, help="use at most this many examples")
    p.add_argument("--input-size", type=_positive_int, help="resize images to this side")
    p.add_argument("--out", help="checkpoint path without suffix")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    _device_option(p, "trained")
    p.set_defaults(func=cmd_train)

    p = add("front")
    p.add_argument(
        "front", metavar="STUDY_OR_FRONT", help="front file (.json), study (.toml) or .db"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    g.add_argument("--json", action="store_true", help="print the front document as JSON")
    p.add_argument("--strict", action="store_true", help="only the strictly non-dominated members")
    p.set_defaults(func=cmd_front)

    p = add("family")
    p.add_argument("action", choices=("add", "list", "remove"))
    p.add_argument("study", metavar="STUDY", help="study file (.toml) or .db file")
    p.add_argument(
        "what", nargs="*", metavar="FILE_OR_NAME", help="add: JSON files; remove: family names"
    )
    p.add_argument("--name", action="append", help="add: only the families of these names")
    p.add_argument("--force", action="store_true", help="add: attach even if the weights differ")
    p.set_defaults(func=cmd_family)

    p = add("plot")
    p.add_argument(
        "studies",
        nargs="+",
        metavar="STUDY",
        help="study files (.toml), .db or front files (.json)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="output folder (default: plots/ next to the front file)"
    )
    p.add_argument("--labels", help="comma-separated legend labels, one per study")
    p.set_defaults(func=cmd_plot)

    p = add("select")
    p.add_argument("front", metavar="FRONT", help="front file (.json) or study file (.toml)")
    p.add_argument("--checkpoint", help="the model's checkpoint (checked against the front)")
    from .metrics import METRICS, budget_names

    for name in budget_names():
        what = METRICS[name].budget_help.replace("%", "%%")
        p.add_argument(f"--{name}", type=_percent_or_number, metavar="BOUND", help=what)
    p.add_argument(
        "--budget", action="append", metavar="METRIC=BOUND", help="any other metric of the front"
    )
    p.add_argument(
        "--fallback",
        choices=("error", "cheapest"),
        default="error",
        help="when nothing fits: fail (default) or take the cheapest member",
    )
    p.add_argument("--json", action="store_true", help="print the member as JSON")
    p.set_defaults(func=cmd_select)

    p = add("export")
    p.add_argument("front", metavar="FRONT", help="front file (.json) or study file (.toml)")
    p.add_argument("--checkpoint", help="the model's checkpoint (default: the study's)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--member", type=_nonneg_int, help="member number (see `paretoskip front`)")
    g.add_argument("--mask", help="bitstring, one bit per unit, 1 = skipped")
    p.add_argument(
        "--out",
        required=True,
        help="output file: .pt2 (torch.export), .pt (TorchScript), .onnx (ONNX), .vmfb (IREE)",
    )
    p.add_argument(
        "--format",
        "--method",
        dest="format",
        choices=("torch.export", "torchscript", "onnx", "iree"),
        help="export format (default: from the suffix of --out; a contradiction is refused)",
    )
    p.add_argument(
        "--static-batch",
        action="store_true",
        help="fix the batch size to --batch-size (default: any batch size)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1,
        help="batch size checked (and fixed with --static-batch); default 1",
    )
    p.add_argument("--force", action="store_true", help="export even if the weights differ")
    p.set_defaults(func=cmd_export)

    p = add("info")
    p.set_defaults(func=cmd_info)

    p = add("worker")
    p.add_argument("study", metavar="STUDY", help="study file (.toml)")
    p.add_argument("--storage", help="the shared study database URL (default: the study's)")
    p.add_argument("--budget", type=_positive_int, help="distinct masks in the whole study")
    p.add_argument("--seed", type=_nonneg_int, help="sampler seed (give each worker its own)")
    p.add_argument("--engine", help="Optuna sampler: tpe, nsga2, nsga3, gp, random, bruteforce")
    p.add_argument("--timeout", type=_positive_float, help="stop this worker after so many seconds")
    p.add_argument("--json", action="store_true", help="print the worker's summary as JSON")
    _device_option(p)
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = bool(getattr(args, "quiet", False))
    args.debug = bool(getattr(args, "debug", False))
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    with warnings.catch_warnings():
        restore = _setup_logging(args.quiet, args.debug)
        try:
            return _call(args)
        except KeyboardInterrupt:  # between two steps of the error handling itself
            print("\ninterrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            restore()


def _call(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except ParetoSkipError as exc:
        if args.debug:
            raise
        print(f"paretoskip: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `paretoskip front x --csv | head`
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # storage, disk, permissions: one line; a bug: its traceback
        from .errors import describe_failure

        message = None if args.debug else describe_failure(exc)
        if message is None:
            raise
        print(f"paretoskip: error: {message}", file=sys.stderr)
        return EXIT_ERROR
