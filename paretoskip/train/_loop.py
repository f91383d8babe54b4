"""The training loop every recipe shares: SGD, warm-up + cosine, augmentation, resuming.

:func:`fit` trains a model in place with one :class:`~paretoskip.train.Recipe`'s steps and
the optimisation settings of :class:`TrainSettings`.  Given a ``state_path`` it writes the
whole training state after every epoch (see :mod:`paretoskip.train._state`) and, started
again with the same settings, continues from the last completed epoch: the result equals an
uninterrupted run bit for bit on the same machine with the same thread count.

Reproducibility: one seed fixes the initial weights (``torch.manual_seed`` before the model
is built, by the caller), the shuffling and the augmentation (one seeded generator) and the
stochastic-depth draws (torch's global generator, forked so the caller's is untouched).  The
weights are bitwise identical for the same seed, thread count, torch build and CPU type.
Across thread counts they are not: the convolution kernels sum in another order with another
number of threads, so the last bits differ after the first step and the runs drift apart
(to statistically equivalent models; measured in ``tests/test_train.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..measure import resolve_device
from ._recipes import Recipe
from ._state import TrainState, read_state, restore_state, write_state

__all__ = ["TrainSettings", "fit", "augment_batch", "evaluate_accuracy", "FitResult"]

logger = logging.getLogger("paretoskip.train")

# Horizontal flips keep the class of natural images, clothes and shoes (a left shoe mirrored
# is a right shoe); they do not keep digits.
_FLIP_DEFAULT = {
    "digits": False,
    "fashion-mnist": True,
    "cifar10": True,
    "cifar100": True,
    "imagefolder": True,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings shared by every recipe.

    Args:
        epochs: passes over the train split.
        batch_size: images per step (the last partial batch of an epoch is dropped).
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 penalty on every parameter.
        warmup_epochs: linear warm-up length in epochs (fractions allowed), then the
            schedule, updated every step.  ``None``: one epoch, at most a tenth of training.
        schedule: ``"cosine"`` (decay to 0 over the steps after the warm-up) or ``"step"``
            (multiply by ``gamma`` at each epoch in ``milestones``, as in the original ResNet
            and stochastic-depth papers).
        milestones: epochs (fractions allowed) of the ``"step"`` schedule's decays.
        gamma: the ``"step"`` schedule's factor.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        augment: random crop after zero padding of ``input_size // 8`` pixels (at least one)
            and, where it keeps the class, a horizontal flip; ``None`` = on.
        hflip: horizontal flips (``None``: where they keep the class: Fashion-MNIST, CIFAR,
            image folders; not digits).
        seed: seeds the weights, shuffling, augmentation and stochastic-depth draws.
        threads: intra-op threads while training (``None``: torch's current setting);
            recorded, because the weights depend on it bit for bit.

    Example:
        >>> TrainSettings(epochs=20, nesterov=True).lr_factor(0, steps_per_epoch=10)
        0.1
        >>> TrainSettings(epochs=0).epochs
        0
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    warmup_epochs: float | None = None
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: bool | None = None
    hflip: bool | None = None
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, accepted: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r} is not accepted; {accepted}")

        if not _is_int(self.epochs) or self.epochs < 0:
            raise bad("epochs", "give an integer >= 0")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise bad("batch_size", "give an integer >= 1")
        if not _is_num(self.lr) or self.lr <= 0:
            raise bad("lr", "give a number > 0")
        if not _is_num(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "give a number in [0, 1)")
        if not isinstance(self.nesterov, bool):
            raise bad("nesterov", "give true or false")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0 (now 0)")
        if not _is_num(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "give a number >= 0")
        if self.warmup_epochs is not None and (
            not _is_num(self.warmup_epochs) or self.warmup_epochs < 0
        ):
            raise bad("warmup_epochs", "give a number of epochs >= 0, or None for the default")
        if self.warmup_epochs is not None and self.epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} leaves no epoch for the cosine decay "
                f"of epochs={self.epochs}; give fewer warm-up epochs"
            )
        if self.schedule not in ("cosine", "step"):
            raise bad("schedule", "accepted: 'cosine', 'step'")
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.schedule == "step":
            if not self.milestones or not all(_is_num(m) and m > 0 for m in self.milestones):
                raise bad("milestones", "the 'step' schedule needs epochs > 0, e.g. [82, 123]")
            if list(self.milestones) != sorted(self.milestones):
                raise bad("milestones", "give them in increasing order")
            if not _is_num(self.gamma) or not 0 < self.gamma < 1:
                raise bad("gamma", "give a number in (0, 1)")
        elif self.milestones:
            raise ConfigError(
                f"milestones={list(self.milestones)} belong to schedule='step' (now {self.schedule!r})"
            )
        if not _is_num(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "give a number in [0, 1)")
        for name in ("augment", "hflip"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise bad(name, "give true, false or None (the dataset's default)")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "give an integer >= 0")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise bad("threads", "give an integer >= 1, or None for torch's setting")

    def warmup_steps(self, steps_per_epoch: int) -> int:
        total = max(1, self.epochs * steps_per_epoch)
        if self.warmup_epochs is None:
            return max(1, min(steps_per_epoch, total // 10))
        return int(round(self.warmup_epochs * steps_per_epoch))

    def lr_factor(self, step: int, *, steps_per_epoch: int) -> float:
        """The learning-rate multiplier of optimizer step ``step`` (0-based)."""
        total = max(1, self.epochs * steps_per_epoch)
        warmup = self.warmup_steps(steps_per_epoch)
        if self.schedule == "step":
            decays = sum(1 for m in self.milestones if step >= m * steps_per_epoch)
            f = self.gamma**decays
            return f * (step + 1) / warmup if step < warmup else f
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@dataclass(frozen=True)
class FitResult:
    history: list[dict[str, Any]]
    seconds: float
    resumed_from: int
    steps_per_epoch: int
    augment: dict[str, Any] | None
    threads: int


def evaluate_accuracy(model: nn.Module, split: Any, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``split``; NaN for an empty split.

    The model's training/eval mode is restored afterwards.

    Example:
        >>> import paretoskip
        >>> from paretoskip.data import load_dataset
        >>> d = load_dataset("digits", limit=200)
        >>> m = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
        >>> 0.0 <= evaluate_accuracy(m, d.val) <= 1.0
        True
    """
    n = len(split)
    if n == 0:
        return float("nan")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                xb = split.x[start : start + batch_size].to(device, non_blocking=True)
                yb = split.y[start : start + batch_size].to(device, non_blocking=True)
                correct += int((model(xb).argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / n


def augment_batch(
    x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and optional horizontal flip of a batch, per sample.

    Works on the tensor directly (one gather), so it costs little next to the forward pass.

    Example:
        >>> import torch
        >>> x = torch.ones(2, 1, 4, 4)
        >>> augment_batch(x, 1, False, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 4, 4])
    """
    b, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[bi, ci, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(dev)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def settings_fingerprint(doc: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines a training run."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} → {b!r}")
    return out


def fit(
    model: nn.Module,
    data: Any,
    *,
    recipe: Recipe,
    recipe_options: Mapping[str, Any],
    settings: TrainSettings,
    run_description: Mapping[str, Any],
    state_path: str | Path | None = None,
    progress: bool = True,
    desc: str = "training",
    device: torch.device | str = "cpu",
    parameters: Iterable[nn.Parameter] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``data.train`` (validation accuracy after every epoch).

    Call it inside ``torch.random.fork_rng`` after seeding (as
    :func:`~paretoskip.train.train_model` does), so that the run is reproducible and the
    caller's generator is left alone.

    Args:
        model: the network, already built (and seeded) on ``device``.
        data: a :class:`~paretoskip.data.DatasetSplits`.
        recipe, recipe_options: what a step computes (options already resolved).
        settings: the optimisation settings.
        run_description: everything else that determines the run (model spec, dataset
            fingerprint, …); with ``settings`` and the recipe it makes the fingerprint a
            saved state must match to be resumed.
        state_path: where the state is written after every epoch; an existing state with
            the same fingerprint is resumed, one with another raises
            :class:`~paretoskip.errors.CheckpointError` naming the differences.
        parameters: what the optimizer updates (default: every parameter that requires a
            gradient).
        on_epoch: called with each epoch's history record.
    """
    device = resolve_device(device)  # a clear error for a device not here
    n = len(data.train)
    if n < 2:
        raise ConfigError(f"the train part of {data.name} has {n} examples; need at least 2")
    bs = min(settings.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    do_augment = settings.augment is None or settings.augment
    pad = max(1, data.input_size // 8) if do_augment else 0
    flip = do_augment and (
        _FLIP_DEFAULT.get(data.name, False) if settings.hflip is None else settings.hflip
    )
    augment = {"random_crop_pad": pad, "hflip": flip} if do_augment else None
    loss_fn = _loss(settings.label_smoothing)
    params = [p for p in (model.parameters() if parameters is None else parameters)]
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.SGD(
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov,
    )
    generator = torch.Generator().manual_seed(settings.seed)
    with _threads(settings.threads):
        threads = torch.get_num_threads()
        fingerprint_doc = {
            "run": dict(run_description),
            "recipe": recipe.name,
            "recipe_options": dict(recipe_options),
            "settings": asdict(settings),
            "threads": threads,
            "device": device.type,
        }
        fingerprint = settings_fingerprint(fingerprint_doc)
        history: list[dict[str, Any]] = []
        start_epoch, spent = 0, 0.0
        if state_path is not None and Path(state_path).exists():
            state = read_state(state_path)
            if state.settings_fingerprint != fingerprint:
                changes = _diff(state.settings, fingerprint_doc) or ["(unknown)"]
                raise CheckpointError(
                    f"the training state {str(state_path)!r} belongs to another run "
                    f"({'; '.join(changes[:6])}); delete it to train from the start, or "
                    "train with the settings it was written for"
                )
            restore_state(state, model, optimizer, generator, device)
            start_epoch, spent, history = state.epoch, state.seconds, state.history
            logger.info(
                "resuming %s from %s: epoch %d of %d done",
                desc,
                state_path,
                start_epoch,
                settings.epochs,
            )

        def set_lr(step: int) -> None:
            f = settings.lr_factor(step, steps_per_epoch=steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = settings.lr * f

        from tqdm import tqdm

        bar = tqdm(
            total=settings.epochs * steps_per_epoch,
            initial=start_epoch * steps_per_epoch,
            disable=not progress,
            desc=desc,
            unit="batch",
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        step = start_epoch * steps_per_epoch
        set_lr(step)
        try:
            for epoch in range(start_epoch + 1, settings.epochs + 1):
                model.train()
                perm = torch.randperm(n, generator=generator)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                parts_sum: dict[str, torch.Tensor] = {}
                correct = torch.zeros((), dtype=torch.int64, device=device)
                seen = 0
                for i in range(steps_per_epoch):
                    idx = perm[i * bs : (i + 1) * bs]
                    xb, yb = data.train.x[idx], data.train.y[idx]
                    if do_augment:
                        xb = augment_batch(xb, pad, flip, generator)
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)
                    out = recipe.step(model, xb, yb, loss_fn, recipe_options)
                    optimizer.step()
                    step += 1
                    set_lr(step)
                    loss_sum += out.loss * len(yb)
                    for k, v in out.parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + v.detach().double() * len(yb)
                    correct += (out.logits.argmax(1) == yb).sum()
                    seen += len(yb)
                    bar.update(1)
                    if progress and (i % 10 == 9 or i == steps_per_epoch - 1):
                        bar.set_postfix(
                            epoch=f"{epoch}/{settings.epochs}",
                            loss=f"{float(loss_sum) / seen:.3f}",
                            acc=f"{int(correct) / seen:.3f}",
                            val=f"{history[-1]['val_accuracy']:.3f}" if history else "-",
                            refresh=False,
                        )
                train_loss = float(loss_sum) / seen
                if not math.isfinite(train_loss):
                    raise ConfigError(
                        f"training diverged (loss {train_loss}) in epoch {epoch}; try a smaller "
                        f"lr (now {settings.lr})"
                    )
                val_acc = evaluate_accuracy(model, data.val)
                elapsed = time.perf_counter() - t0
                done_here = epoch - start_epoch
                eta = elapsed / done_here * (settings.epochs - epoch)
                record = {
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": train_loss,
                    "train_accuracy": int(correct) / seen,
                    "val_accuracy": val_acc,
                    "seconds": spent + elapsed,
                    **{f"loss_{k}": float(v) / seen for k, v in parts_sum.items()},
                }
                history.append(record)
                if state_path is not None:
                    write_state(
                        state_path,
                        TrainState(
                            epoch=epoch,
                            step=step,
                            seconds=spent + elapsed,
                            history=history,
                            settings_fingerprint=fingerprint,
                            settings=fingerprint_doc,
                        ),
                        model,
                        optimizer,
                        generator,
                    )
                if progress:
                    bar.set_postfix(
                        epoch=f"{epoch}/{settings.epochs}",
                        loss=f"{train_loss:.3f}",
                        acc=f"{record['train_accuracy']:.3f}",
                        val=f"{val_acc:.3f}",
                    )
                logger.info(
                    "%s epoch %d/%d: loss %.4f, train acc %.4f, val acc %.4f, lr %.4g, "
                    "%.0f s, ETA %.0f s",
                    desc,
                    epoch,
                    settings.epochs,
                    train_loss,
                    record["train_accuracy"],
                    val_acc,
                    record["lr"],
                    record["seconds"],
                    eta,
                )
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            bar.close()
    model.eval()
    return FitResult(
        history=history,
        seconds=spent + time.perf_counter() - t0,
        resumed_from=start_epoch,
        steps_per_epoch=steps_per_epoch,
        augment=augment,
        threads=threads,
    )


def _loss(label_smoothing: float):
    if label_smoothing:

        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

        return loss
    return F.cross_entropy
