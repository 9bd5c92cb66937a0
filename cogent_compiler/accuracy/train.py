"""Measure a model's top-1 accuracy and fine-tune it to recover accuracy.

``evaluate`` runs a torch module or any numpy-batch callable (a compiled
bundle's runner, say) over labelled inputs; ``finetune`` trains a torch module
in place with Adam and cross-entropy for a number of steps or seconds.  torch
is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cogent_compiler.accuracy.data import Dataset
from cogent_compiler.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["evaluate", "finetune"]

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 5.0


def evaluate(
    model: torch.nn.Module | Callable[[np.ndarray], Any], x: np.ndarray, y: np.ndarray, *, batch_size: int = 64
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on inputs ``x`` with integer labels ``y``.

    ``model`` is a ``torch.nn.Module`` (put in eval mode and run under
    ``torch.no_grad`` on its parameters' device) or a callable mapping a numpy
    batch to logits of shape ``(batch, classes)`` (array or tensor).  ``x`` is
    fed as given, in batches of ``batch_size``; ``len(x) == len(y) > 0``.

    Raises DataError for mismatched or empty inputs and for outputs that are
    not ``(batch, classes)`` logits.
    """
    import torch

    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0:
        raise DataError("evaluate: no samples; pass a non-empty data set")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"evaluate: {len(x)} inputs but labels of shape {y.shape}; pass one label per input")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")

    if isinstance(model, torch.nn.Module):
        model.eval()
        device = _device_of(model)

        def run(batch: np.ndarray) -> Any:
            return model(torch.from_numpy(np.ascontiguousarray(batch)).to(device))
    elif callable(model):
        run = model
    else:
        raise TypeError(f"evaluate: model must be a torch.nn.Module or a callable, got {type(model).__name__}")

    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            out = run(batch)
            logits = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
            if logits.ndim != 2 or logits.shape[0] != len(batch):
                raise DataError(
                    f"evaluate: the model returned shape {logits.shape} for a batch of {len(batch)}; "
                    "it must return (batch, classes) logits"
                )
            correct += int(np.count_nonzero(logits.argmax(axis=1) == y[start:start + batch_size]))
    return correct / len(x)


def finetune(
    model: torch.nn.Module,
    data: Dataset,
    *,
    steps: int | None = None,
    time_s: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data``'s train part with Adam and cross-entropy.

    Stops after ``steps`` optimizer steps or once ``time_s`` seconds have
    passed, whichever comes first (at least one must be given; at least one
    step is always taken).  Batches of ``batch_size`` come from a shuffle
    seeded by ``seed``, reshuffled each epoch; a short last batch is dropped
    when a full one exists, so batch-norm never sees a batch of one.  Inputs
    are fed in their stored dtype (a uint8 model casts itself), labels as
    int64.  ``progress(msg)`` gets "step k/N, loss, elapsed" about every 10 %
    of the budget or every 5 s, and once at the end.  The model is left in
    eval mode, even when training fails.

    Returns ``{"steps": int, "seconds": float, "final_loss": float}`` — the
    steps taken, the wall time and the last step's loss.

    Raises ValueError for a missing or non-positive budget, DataError when
    the model's outputs do not cover the data set's classes.
    """
    import torch
    import torch.nn.functional as F

    if steps is None and time_s is None:
        raise ValueError("finetune needs a budget: pass steps=, time_s= or both")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if time_s is not None and not time_s > 0:
        raise ValueError(f"time_s must be positive, got {time_s}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"finetune trains a torch.nn.Module, got {type(model).__name__}")

    device = _device_of(model)
    x_all = torch.from_numpy(np.ascontiguousarray(data.x_train))
    y_all = torch.from_numpy(np.ascontiguousarray(data.y_train, dtype=np.int64))
    n = len(y_all)
    per_batch = min(batch_size, n)
    batches_per_epoch = max(1, n // per_batch)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    report_every_steps = max(1, math.ceil(steps / 10)) if steps is not None else None
    report_every_s = min(_PROGRESS_EVERY_S, time_s / 10) if time_s is not None else _PROGRESS_EVERY_S
    total = str(steps) if steps is not None else "?"

    def say(k: int, loss: float, elapsed: float) -> None:
        budget = f" of {time_s:g}s" if time_s is not None else ""
        msg = f"finetune step {k}/{total}, loss {loss:.4f}, {elapsed:.1f}s{budget}"
        log.info("%s", msg)
        if progress is not None:
            progress(msg)

    # dropout and friends draw from the global RNG: seed it for repeatable runs, without leaking the seed
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    k, loss_value = 0, float("nan")
    t0 = time.perf_counter()
    last_report = t0
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            model.train()
            # The layers train (batch norm statistics, dropout) but the model itself stays in eval mode: GoogLeNet and
            # Inception v3 switch on auxiliary classifiers when the top module trains, and pruning leaves those unresized.
            model.training = False
            order = torch.randperm(n, generator=gen)
            pos = 0
            while True:
                if pos >= batches_per_epoch:
                    order, pos = torch.randperm(n, generator=gen), 0
                idx = order[pos * per_batch:(pos + 1) * per_batch]
                pos += 1
                xb, yb = x_all[idx].to(device), y_all[idx].to(device)
                logits = model(xb)
                if k == 0:
                    _check_logits(logits, data.num_classes)
                loss = F.cross_entropy(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                k += 1
                loss_value = float(loss.detach())
                now = time.perf_counter()
                done = (steps is not None and k >= steps) or (time_s is not None and now - t0 >= time_s)
                if done:
                    break
                if (report_every_steps is not None and k % report_every_steps == 0) or now - last_report >= report_every_s:
                    say(k, loss_value, now - t0)
                    last_report = now
    finally:
        model.eval()
    seconds = time.perf_counter() - t0
    say(k, loss_value, seconds)
    return {"steps": k, "seconds": seconds, "final_loss": loss_value}


def _device_of(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer; the CPU for a stateless model."""
    import torch

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_logits(logits: Any, num_classes: int) -> None:
    """Refuse outputs cross-entropy would fail on deep inside torch."""
    shape = tuple(getattr(logits, "shape", ()))
    if len(shape) != 2:
        raise DataError(f"finetune: the model returned shape {shape}; it must return (batch, classes) logits")
    if shape[1] < num_classes:
        raise DataError(
            f"finetune: the model has {shape[1]} outputs but the data set has {num_classes} classes; "
            f"use a model with {num_classes} outputs or relabel the data"
        )
