"""Train a skippable ResNet on an in-memory dataset, with or without stochastic depth.

A model meant to have its residual branches skipped at inference should be trained with
stochastic depth (Huang et al., 2016): each block's branch is dropped at random during
training, with a survival probability decaying linearly from 1 to ``p_last``.  The
``"plain"`` recipe trains the same architecture without it (``p_last=1``), as a baseline.

Example:
    >>> from paretoskip.data import load_dataset
    >>> from paretoskip.train import train_model
    >>> data = load_dataset("digits")
    >>> result = train_model("resnet20", data, epochs=1, progress=False)
    >>> 0.0 <= result.test_accuracy <= 1.0
    True

Training is seeded: ``torch.manual_seed(seed)`` before building the model, and one seeded
generator for shuffling and augmentation, so one seed gives the same weights on one machine
(with the same thread count).  The caller's global RNG state is restored afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import DatasetSplits, Split
from .errors import ConfigError
from .models import create_model

__all__ = [
    "RECIPES",
    "TrainResult",
    "train_model",
    "train_and_save",
    "evaluate_accuracy",
    "augment_batch",
]

logger = logging.getLogger(__name__)

RECIPES = ("plain", "stochastic-depth")

# Augmentation per dataset: random crop after zero padding of ``input_size // 8`` pixels (at
# least 1: one pixel for 8×8 digits, 3 for 28×28 Fashion-MNIST, 4 for 32×32 CIFAR), plus a
# horizontal flip where mirrored images stay in their class.  Zero is the train mean after
# normalisation.
_FLIP = {
    "digits": False,
    "fashion-mnist": False,
    "cifar10": True,
    "cifar100": True,
    "imagefolder": True,
}


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What :func:`train_model` produced.

    ``history`` has one dict per epoch: ``epoch``, ``lr`` (at the epoch's end),
    ``train_loss``, ``train_accuracy`` (on augmented batches, with branches dropped),
    ``val_accuracy`` and ``seconds`` (since the start).  ``val_accuracy`` and
    ``test_accuracy`` are those of the final model.  ``settings`` holds the recipe and
    every hyper-parameter; ``checkpoint`` the ``.safetensors`` path when saved.
    """

    model: nn.Module
    epochs: int
    seconds: float
    val_accuracy: float
    test_accuracy: float
    history: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def evaluate_accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``split``; NaN for an empty split.

    The model's training/eval mode is restored afterwards.
    """
    n = len(split)
    if n == 0:
        return float("nan")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    device = _model_device(model)
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


def _check_positive(
    name: str, value: Any, *, integer: bool = False, allow_zero: bool = False
) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (value >= 0 if allow_zero else value > 0):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}={value!r} must be {kind} {'>= 0' if allow_zero else '> 0'}")


def train_model(
    model_name: str,
    data: DatasetSplits,
    *,
    recipe: str = "stochastic-depth",
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    p_last: float = 0.5,
    augment: bool | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train ``model_name`` on ``data.train`` and measure it on ``data.val`` and ``data.test``.

    SGD with momentum, a linear warm-up over the first epoch (at most a tenth of training)
    then a cosine decay to zero, updated every step.  The last partial batch of each epoch is
    dropped (batch norm dislikes tiny batches).

    Args:
        model_name: a name accepted by :func:`paretoskip.create_model`.
        data: from :func:`paretoskip.data.load_dataset`; gives ``num_classes``,
            ``in_channels`` and ``input_size``.
        recipe: ``"stochastic-depth"`` (survival of the last block ``p_last``) or
            ``"plain"`` (``p_last=1``).
        augment: random crop with padding (+ horizontal flip for CIFAR and image folders);
            ``None`` = on for every dataset (a one-pixel shift for 8×8 digits).
        progress: show a tqdm bar (loss, accuracy).
        model_kwargs: further :func:`create_model` arguments (``shortcut``, ``widths``).
        device: where to train; the returned model stays there, in eval mode.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; available: {', '.join(RECIPES)}")
    _check_positive("epochs", epochs, integer=True, allow_zero=True)
    _check_positive("batch_size", batch_size, integer=True)
    _check_positive("lr", lr)
    _check_positive("momentum", momentum, allow_zero=True)
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an integer")
    if recipe == "stochastic-depth" and not (
        isinstance(p_last, (int, float)) and 0.0 < p_last <= 1.0
    ):
        raise ConfigError(f"p_last={p_last!r} must be in (0, 1]")
    if len(data.train) < 2:
        raise ConfigError(
            f"the train part of {data.name} has {len(data.train)} examples; need at least 2"
        )

    kwargs = dict(model_kwargs or {})
    if "p_last" in kwargs:
        raise ConfigError("give p_last as train_model(p_last=...), not in model_kwargs")
    for key, value in (
        ("num_classes", data.num_classes),
        ("in_channels", data.in_channels),
        ("input_size", data.input_size),
    ):
        if key in kwargs and kwargs[key] != value:
            raise ConfigError(
                f"model_kwargs {key}={kwargs[key]!r} contradicts the dataset ({value})"
            )
        kwargs[key] = value
    kwargs["p_last"] = 1.0 if recipe == "plain" else float(p_last)

    do_augment = True if augment is None else bool(augment)
    pad = max(1, data.input_size // 8) if do_augment else 0
    flip = _FLIP.get(data.name, False) and do_augment
    device = torch.device(device)

    n = len(data.train)
    steps_per_epoch = n // batch_size if n >= batch_size else 1
    bs = batch_size if n >= batch_size else n
    total_steps = max(1, epochs * steps_per_epoch)
    warmup = max(1, min(steps_per_epoch, total_steps // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    settings: dict[str, Any] = {
        "model": model_name,
        "recipe": recipe,
        "p_last": kwargs["p_last"],
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "seed": seed,
        "schedule": f"linear warm-up {warmup} steps, cosine to 0 over {total_steps} steps",
        "augment": {"random_crop_pad": pad, "hflip": flip} if do_augment else None,
        "model_kwargs": {k: v for k, v in kwargs.items()},
        "steps_per_epoch": steps_per_epoch,
        "device": str(device),
    }
    logger.info("training %s on %s: %s", model_name, data.name, settings)

    from tqdm import tqdm

    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(model_name, **kwargs).to(device)
        gen = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        bar = tqdm(
            total=epochs * steps_per_epoch,
            disable=not progress,
            desc=f"{model_name} {data.name}",
            unit="batch",
            dynamic_ncols=True,
        )
        try:
            for epoch in range(1, epochs + 1):
                model.train()
                perm = torch.randperm(n, generator=gen)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                seen = 0
                for i in range(steps_per_epoch):
                    idx = perm[i * bs : (i + 1) * bs]
                    xb = data.train.x[idx]
                    yb = data.train.y[idx]
                    if do_augment:
                        xb = augment_batch(xb, pad, flip, gen)
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                    out = model(xb)
                    loss = F.cross_entropy(out, yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.detach() * len(yb)
                    correct += (out.detach().argmax(1) == yb).sum()
                    seen += len(yb)
                    bar.update(1)
                    if progress and (i % 10 == 9 or i == steps_per_epoch - 1):
                        bar.set_postfix(
                            epoch=f"{epoch}/{epochs}",
                            loss=f"{float(loss_sum) / seen:.3f}",
                            acc=f"{int(correct) / seen:.3f}",
                        )
                train_loss = float(loss_sum) / seen
                if not math.isfinite(train_loss):
                    raise ConfigError(
                        f"training diverged (loss {train_loss}) in epoch {epoch}; try a smaller lr (now {lr})"
                    )
                val_acc = evaluate_accuracy(model, data.val)
                record = {
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": train_loss,
                    "train_accuracy": int(correct) / seen,
                    "val_accuracy": val_acc,
                    "seconds": time.perf_counter() - start,
                }
                history.append(record)
                if progress:
                    bar.set_postfix(
                        epoch=f"{epoch}/{epochs}",
                        loss=f"{train_loss:.3f}",
                        acc=f"{record['train_accuracy']:.3f}",
                        val=f"{val_acc:.3f}",
                    )
                logger.info(
                    "epoch %d/%d: loss %.4f, train acc %.4f, val acc %.4f, lr %.4g, %.1f s",
                    epoch,
                    epochs,
                    train_loss,
                    record["train_accuracy"],
                    val_acc,
                    record["lr"],
                    record["seconds"],
                )
        finally:
            bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    val_accuracy = history[-1]["val_accuracy"] if history else evaluate_accuracy(model, data.val)
    test_accuracy = evaluate_accuracy(model, data.test)
    logger.info(
        "trained %s on %s in %.1f s: val acc %.4f, test acc %.4f",
        model_name,
        data.name,
        seconds,
        val_accuracy,
        test_accuracy,
    )
    return TrainResult(
        model=model,
        epochs=epochs,
        seconds=seconds,
        val_accuracy=val_accuracy,
        test_accuracy=test_accuracy,
        history=history,
        settings=settings,
    )


def train_and_save(
    model_name: str,
    data: DatasetSplits,
    out_path: str | os.PathLike,
    **kw: Any,
) -> TrainResult:
    """:func:`train_model`, then :func:`~paretoskip.checkpoint.save_checkpoint` to ``out_path``.

    The checkpoint's JSON records the recipe and every training setting, the dataset
    (``data.describe()``, including its fingerprint), the epochs, time, validation and test
    accuracy, the per-epoch history and the library versions.  The returned result's
    ``checkpoint`` is the ``.safetensors`` path.
    """
    from .checkpoint import save_checkpoint

    result = train_model(model_name, data, **kw)
    metadata = {
        "recipe": result.settings["recipe"],
        "p_last": result.settings["p_last"],
        "training": result.settings,
        "dataset": data.describe(),
        "dataset_fingerprint": data.fingerprint,
        "epochs": result.epochs,
        "train_seconds": result.seconds,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "history": result.history,
    }
    path = save_checkpoint(result.model, out_path, metadata=metadata)
    logger.info("saved %s to %s", model_name, path)
    return dataclasses.replace(result, checkpoint=str(Path(path)))
