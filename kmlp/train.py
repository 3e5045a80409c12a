"""Training: a Config and a names file in, a run directory out.

``train()`` is what ``kmlp train`` runs: it builds the data pipeline and the model, calls
``model.fit`` on the train split with the dev split as validation, evaluates both splits in full,
and writes the run directory (see :mod:`kmlp.runs`) only once everything has succeeded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import runs
from .callbacks import StepDecay
from .config import Config
from .data import NamesData
from .model import build_model, compile_model, make_optimizer

EVAL_BATCH = 4096
MAX_STEPS_PER_CALL = 250


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved."""


@dataclass
class Plan:
    """How a number of optimizer steps maps onto ``model.fit``'s epochs and calls."""

    steps: int           # optimizer steps in all
    steps_per_call: int  # optimizer steps per compiled call (one Keras "batch")
    calls_per_epoch: int
    epochs: int          # one evaluation on dev after each

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_per_call * self.calls_per_epoch


def plan_training(config: Config, data: NamesData) -> Plan:
    """Choose steps per call and epoch length so that the total and every milestone fall exactly on
    a call boundary, with about one pass over the train split per epoch (at most 200 epochs)."""
    pass_steps = data.steps_per_epoch(config.batch_size)
    steps = config.epochs * pass_steps if config.epochs else int(config.steps)
    if config.steps_per_call:
        per_call = config.steps_per_call
        if steps % per_call:
            steps = math.ceil(steps / per_call) * per_call
    else:
        g = steps
        for m in config.decay_at:
            if m < steps:
                g = math.gcd(g, m)
        per_call = max(d for d in range(1, min(g, MAX_STEPS_PER_CALL) + 1) if g % d == 0)
    calls = steps // per_call
    target_epochs = min(200, max(1, round(steps / pass_steps)))
    divisors = [d for d in range(1, calls + 1) if calls % d == 0]
    epochs = min(divisors, key=lambda d: (abs(d - target_epochs), d))
    return Plan(steps=steps, steps_per_call=per_call, calls_per_epoch=calls // epochs, epochs=epochs)


def fit_verdict(train_loss: float, dev_loss: float) -> str:
    """One line on under- or overfitting, from the gap between dev and train loss."""
    gap = dev_loss - train_loss
    if gap > 0.08:
        return (f"overfits: dev loss is {gap:.3f} above train; more regularisation (dropout, weight "
                f"decay), fewer steps or a smaller model should help")
    if gap < 0.03:
        return (f"underfits: dev loss is within {max(gap, 0):.3f} of train; a larger model or longer "
                f"training has room to improve")
    return f"fits well: dev loss is {gap:.3f} above train"


def default_out_dir(name: str) -> Path:
    return Path("saved_models") / name


def train(config: Config, data_path=None, out_dir=None, preset_name: str | None = None,
          callbacks=(), verbose: int = 1, log=print) -> "TrainResult":
    """Train a model as configured and write its run directory; returns the result.

    ``callbacks`` are extra Keras callbacks for ``model.fit``. Raises :class:`TrainingDiverged`
    (and saves nothing) if the loss blows up.
    """
    config.validate()
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    data = NamesData.from_file(data_path, block_size=config.block_size, seed=config.seed)
    log(f"data: {data.path}; {data.summary()}")
    out_dir = Path(out_dir) if out_dir else default_out_dir(preset_name or "custom")

    model = build_model(vocab_size=len(data.vocab), block_size=config.block_size, n_embd=config.n_embd,
                        n_hidden=config.n_hidden, n_layers=config.n_layers, dropout=config.dropout,
                        norm=None if config.norm == "none" else config.norm, seed=config.seed)
    optimizer = make_optimizer(config.optimizer, config.lr, weight_decay=config.weight_decay)
    compile_model(model, optimizer, jit_compile=config.jit_compile)
    plan = plan_training(config, data)
    log(f"model: {model.count_params():,} parameters; {plan.steps:,} steps at batch {config.batch_size} "
        f"({plan.epochs} evaluations on dev, {plan.steps_per_call} steps per compiled call)")

    staging = runs.staging_dir(out_dir)
    try:
        train_ds = data.dataset("train", config.batch_size, steps_per_call=plan.steps_per_call)
        dev_ds = data.dataset("dev", EVAL_BATCH)
        cbs = [StepDecay(config.lr, config.decay_at, config.decay_factor),
               keras.callbacks.TerminateOnNaN(),
               keras.callbacks.CSVLogger(str(staging / runs.HISTORY_FILE)),
               *callbacks]
        fit_started = time.perf_counter()
        history = model.fit(train_ds, steps_per_epoch=plan.calls_per_epoch, epochs=plan.epochs,
                            validation_data=dev_ds, callbacks=cbs, verbose=verbose,
                            shuffle=False)  # the pipeline shuffles
        fit_seconds = time.perf_counter() - fit_started
        losses = history.history.get("loss", [])
        if not losses or not all(math.isfinite(v) for v in losses) or int(model.optimizer.iterations) < plan.steps:
            raise TrainingDiverged(
                f"training diverged (loss became NaN or infinite) at step "
                f"{int(model.optimizer.iterations):,}; try a smaller --lr (now {config.lr:g}); "
                f"nothing was saved")
        train_loss = evaluate_loss(model, data.dataset("train", EVAL_BATCH, shuffle=False))
        dev_loss = evaluate_loss(model, dev_ds)
        metrics = {
            "train_loss": train_loss,
            "dev_loss": dev_loss,
            "steps": int(model.optimizer.iterations),
            "seconds": round(fit_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
            "steps_per_second": round(plan.steps / fit_seconds, 1),
            "params": int(model.count_params()),
            "epochs": plan.epochs,
            "batch_size": config.batch_size,
        }
        model.save(staging / runs.MODEL_FILE)
        runs.write_json(staging / runs.CONFIG_FILE, {
            "config": config.to_dict(),
            "vocab": data.vocab.to_json(),
            "data": str(data.path),
            "preset": preset_name,
        })
        runs.write_json(staging / runs.METRICS_FILE, metrics)
        runs.publish(staging, out_dir)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"train loss {train_loss:.4f}  dev loss {dev_loss:.4f}  "
        f"({plan.steps:,} steps in {fit_seconds:.1f} s, {plan.steps / fit_seconds:,.0f} steps/s)")
    log(fit_verdict(train_loss, dev_loss))
    log(f"saved to {out_dir}")
    return TrainResult(model=model, data=data, config=config, metrics=metrics, out_dir=out_dir,
                       history=history.history)


@dataclass
class TrainResult:
    model: keras.Model
    data: NamesData
    config: Config
    metrics: dict
    out_dir: Path
    history: dict


def evaluate_loss(model: keras.Model, dataset) -> float:
    """Mean cross-entropy over a whole (finite) dataset, weighting every example equally."""
    total, count = 0.0, 0
    for x, y in dataset:
        logits = model(x, training=False)
        losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        total += float(tf.reduce_sum(losses))
        count += int(y.shape[0])
    return total / max(count, 1)
