"""What a training leaves: its figures (metrics.json), the run folder, and a verdict on the fit."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from kmlp import plots
from kmlp.config import Config
from kmlp.data.pipeline import NamesData
from kmlp.errors import TrainingDiverged
from kmlp.runs import folders, rundir
from kmlp.training import logs
from kmlp.training.setup import EVAL_BATCH, TRAIN_LOSS_EXAMPLES, Setup, evaluate_loss
from kmlp.utils.atomic import write_json


@dataclass
class TrainResult:
    model: keras.Model
    data: NamesData
    config: Config
    metrics: dict
    out_dir: Path
    history: dict


def fit_verdict(train_loss: float, dev_loss: float, vocab_size: int) -> str:
    """One line on under- or overfitting, from the gap between dev and train loss."""
    uniform = math.log(vocab_size)
    if train_loss >= uniform:
        return (f"barely trained: train loss {train_loss:.3f} is no better than a uniform guess over "
                f"the {vocab_size} tokens ({uniform:.3f}); train for more steps")
    gap = dev_loss - train_loss
    if gap > 0.08:
        return (f"overfits: dev loss is {gap:.3f} above train; more regularisation (dropout, weight "
                f"decay), fewer steps or a smaller model should help")
    if gap < 0.03:
        return (f"underfits: dev loss is within {max(gap, 0):.3f} of train; a larger model or longer "
                f"training has room to improve")
    return f"fits well: dev loss is {gap:.3f} above train"


def check_diverged(setup: Setup, curve, start_loss: float, backup, out_dir: Path,
                   stopped_early: bool = False) -> None:
    """Raise :class:`TrainingDiverged` (deleting the backup, whose last epoch holds the broken
    weights) if the training loss became NaN or infinite, or blew up: ended at more than twice
    where it started and twice a uniform guess. An undertrained model is not diverged, nor one that
    early stopping stopped."""
    steps_done = int(setup.model.optimizer.iterations.numpy())  # (int() fails on a MirroredVariable)
    end_loss = curve.losses[-1] if curve.losses else start_loss
    limit = 2 * max(start_loss, math.log(len(setup.data.vocab)))
    if (steps_done < setup.plan.steps and not stopped_early) or not math.isfinite(end_loss):
        what = f"the loss became NaN or infinite by step {steps_done:,}"
    elif end_loss > limit:
        what = f"the training loss rose from {start_loss:.4g} to {end_loss:.4g}"
    else:
        return
    backup.remove()
    raise TrainingDiverged(f"training diverged ({what}); try a smaller --lr (now {setup.config.lr:g}); "
                           f"nothing was saved" + (f" and {out_dir} is unchanged" if out_dir.exists() else ""))


def measure(setup: Setup, clock, start_epoch: int, fit_seconds: float, started: float) -> dict:
    """metrics.json: the losses on the whole dev split and on the train split (or, when it is large,
    a fixed sample of :data:`TRAIN_LOSS_EXAMPLES` of its examples), and what the run took."""
    steps_done = int(setup.model.optimizer.iterations.numpy())  # (fewer than planned if stopped early)
    resumed_at = min(start_epoch * setup.plan.steps_per_epoch, steps_done)  # (a last epoch cut short)
    steps_run = steps_done - resumed_at
    data = setup.data
    metrics = {
        "train_loss": evaluate_loss(setup.model, data.dataset("train", EVAL_BATCH, shuffle=False,
                                                              sample=TRAIN_LOSS_EXAMPLES)),
        "train_loss_examples": min(data.num_examples("train"), TRAIN_LOSS_EXAMPLES),  # all, or a sample
        "train_examples": data.num_examples("train"),
        "dev_loss": evaluate_loss(setup.model, data.dataset("dev", EVAL_BATCH)),
        "steps": steps_done,
        "seconds": round(clock.seconds, 3),  # training time of the whole run, resumed parts included
        "total_seconds": round(time.perf_counter() - started, 3),  # this process: data to metrics
        "steps_per_second": round(steps_run / max(fit_seconds, 1e-9), 1),
        "params": int(setup.model.count_params()),
        "epochs": setup.plan.epochs,
        "batch_size": setup.config.batch_size,
    }
    if start_epoch:
        metrics["resumed_at_step"] = resumed_at
    return metrics


def save_run(setup: Setup, out_dir: Path, metrics: dict, curve, backup, preset_name, log) -> None:
    """Write the run into a hidden folder beside ``out_dir``, then put it in place (kmlp.runs.folders.publish)."""
    data = setup.data
    staging = folders.staging_dir(out_dir)
    try:
        shutil.copyfile(backup.history, staging / rundir.HISTORY_FILE)
        logs.copy(backup.logs, staging / rundir.LOGS_DIR)
        setup.model.save(staging / rundir.MODEL_FILE)
        plots.plot_training(staging, setup.model, data.vocab, curve, staging / rundir.HISTORY_FILE,
                            setup.plan.steps_per_epoch,
                            title=f"Training curve: {preset_name or 'custom'}, {setup.plan.steps:,} steps")
        write_json(staging / rundir.CONFIG_FILE, {
            "config": setup.config.to_dict(),
            "vocab": data.vocab.to_json(),
            "data": data_location(data),
            "data_sha256": data.data_sha256,  # of the bytes read, not of the file as it is now
            "preset": preset_name,
            **({"started_from": setup.started_from} if setup.started_from else {}),
        })
        write_json(staging / rundir.METRICS_FILE, metrics)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    left = folders.publish(staging, out_dir)
    if left:
        log(f"files put into {out_dir} during the training are not kmlp's; they are kept in {left}")


def data_location(data: NamesData) -> str | None:
    return str(Path(data.path).absolute()) if data.path else None
