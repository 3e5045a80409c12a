"""Training: a Config and a names file in, a run directory out.

:func:`train` prepares the run (:func:`kmlp.training.setup.prepare`), plans it to a time budget if
asked (:mod:`kmlp.training.budget`), fits on the train split with the dev split as validation and
a backup of every epoch (:mod:`kmlp.training.backup`), evaluates both, and writes the run
directory (see :mod:`kmlp.runs.run`) only once everything has succeeded.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import tensorflow as tf

from kmlp.config import Config
from kmlp.data.pipeline import NamesData
from kmlp.runs import folders, rundir, start
from kmlp.runs.lock import RunLock
from kmlp.training import backup as backups, distributed, logs
from kmlp.training.budget import as_ran, end_callbacks, fit_to_budget, until_stop
from kmlp.training.callbacks.early_stopping import EarlyStopping
from kmlp.training.callbacks.progress import Progress
from kmlp.training.results import TrainResult, check_diverged, data_location, fit_verdict, measure, save_run
from kmlp.training.setup import EVAL_BATCH, evaluate_loss, prepare, rate_for_plan
from kmlp.training.small_lists import dev_note, patience_steps


def train(config: Config, data_path=None, out_dir=None, preset_name: str | None = None,
          callbacks=(), verbose: int = 1, log=print, data: NamesData | None = None,
          resume: bool = False, strategy: tf.distribute.Strategy | None = None,
          started: float | None = None) -> "TrainResult":
    """Train a model as configured and write its run directory; returns the result.

    ``data`` is the already loaded ``data_path``, if the caller has it. ``callbacks`` are extra Keras
    callbacks for ``model.fit``. ``out_dir`` (default ``saved_models/<preset>``) may be new, empty or
    an earlier run, which is replaced (its exports are kept); anything else is refused before any
    work, and one process at a time writes it (:class:`kmlp.runs.lock.RunLock`). Raises
    :class:`TrainingDiverged`, saving nothing, if the loss blows up.

    Every epoch is backed up beside the run (:mod:`kmlp.training.backup`); if the process dies, the same call
    with ``resume=True`` continues from the last completed epoch, with the same minibatches an
    uninterrupted run would have seen. ``strategy`` (see :func:`make_strategy`) spreads each
    minibatch over several devices; under a MultiWorkerMirroredStrategy only the chief writes
    ``out_dir``, and every other worker keeps its own lock and backup beside it
    (:func:`kmlp.training.distributed.worker_name`).

    With ``config.minutes`` the steps are planned so that the whole call ends within that many
    minutes, counted from ``started`` (a ``time.perf_counter()`` value; default: now), see
    :func:`fit_to_budget`; if the machine gets slower, the run ends early, at the end of a call (its
    schedule still the one planned for its steps). The result's configuration, as config.json, is the
    run as it ran (no ``minutes``; ``stop_at`` where it ended early): it repeats the run exactly, and
    metrics.json records the budget under ``budget``. ``verbose`` shows the progress in optimizer
    steps (:class:`kmlp.training.callbacks.progress.Progress`).

    With ``config.start_from`` the model starts from that run's (:mod:`kmlp.runs.start`), which is
    only read; early stopping (:func:`early_stopping`) then keeps the weights of the best dev loss.
    """
    started = time.perf_counter() if started is None else started
    worker = distributed.worker_name(strategy)  # None: this process writes the run
    out_dir = folders.check_out_dir(out_dir or rundir.default_run_dir(preset_name or "custom"), worker=worker)
    if config.start_from:
        start.check_out_dir(out_dir, config.start_from)
    with RunLock(out_dir, worker):
        data = data or NamesData.for_config(data_path, config)
        log(f"data: {data.path}; {data.summary()}")
        setup = prepare(config, data, strategy, log=log)
        data = setup.data  # (with --from: in the vocabulary of the run it starts from)
        log_start(setup, log)
        start_loss = evaluate_loss(setup.model, data.dataset("train", EVAL_BATCH, shuffle=False).take(1))
        backup = backups.Backup(out_dir, worker)
        setup, budget = plan(setup, backup, resume, started, preset_name, log)
        expected = backups.identity(setup.config, data, setup.plan, setup.started_from)
        start_epoch = distributed.agree_on_start(setup.strategy, backup, backup.start(resume, expected, log),
                                                 expected, log)
        curve, clock, backup_callbacks = backup.callbacks(start_epoch)
        stopper = early_stopping(setup, backup, start_epoch)
        # Before the backup's callbacks: an epoch's logs are on disk before the backup records the epoch.
        board = logs.tensorboard(backup.logs, data.vocab, setup.plan.epochs)
        if not start_epoch:
            logs.write_config(backup.logs / logs.TRAIN, {"preset": preset_name, "data": data_location(data),
                                                         **setup.config.to_dict()})
        log(logs.watch_hint(backup.logs, out_dir))
        progress = [Progress(as_ran(setup).plan.steps, earlier=clock.earlier)] if verbose else []
        fit_started = time.perf_counter()
        try:
            history = setup.fit([keras.callbacks.TerminateOnNaN(), board, *backup_callbacks, *stopper, *progress,
                                 *callbacks, *end_callbacks(setup, budget)], start_epoch=start_epoch)
        except KeyboardInterrupt:
            log(f"interrupted; the same command with --resume continues from the last completed "
                f"epoch (kept in {backup.path})")
            raise
        fit_seconds = time.perf_counter() - fit_started
        if stopper:
            board.log_embeddings()  # of the best weights early stopping kept, not of the last epoch
        setup = as_ran(setup, budget)
        check_diverged(setup, curve, start_loss, backup, out_dir, stopped_early=any(s.stopped for s in stopper))
        metrics = measure(setup, clock, start_epoch, fit_seconds, started)
        for s in stopper:
            metrics["early_stopping"] = s.record()
            log(early_stopping_summary(metrics["early_stopping"]))
        if budget:
            metrics["budget"] = budget.record(setup.config)
        if worker is None:
            save_run(setup, out_dir, metrics, curve, backup, preset_name, log)
        backup.remove()
    steps_run = metrics["steps"] - metrics.get("resumed_at_step", 0)
    sampled = "" if metrics["train_loss_examples"] == metrics["train_examples"] else \
        f" (on a fixed sample of {metrics['train_loss_examples']:,} of {metrics['train_examples']:,} examples)"
    log(f"train loss {metrics['train_loss']:.4f}{sampled}  dev loss {metrics['dev_loss']:.4f}  "
        f"({steps_run:,} steps in {fit_seconds:.1f} s, {steps_run / max(fit_seconds, 1e-9):,.0f} steps/s)")
    log(fit_verdict(metrics["train_loss"], metrics["dev_loss"], len(data.vocab)))
    if worker is not None:
        log(f"{worker} done; the chief saves the run to {out_dir}")
    else:
        log(f"saved to {out_dir}" + (f" ({time.perf_counter() - started:.1f} s in all, for a budget of "
                                     f"{config.minutes * 60:g} s)" if budget else ""))
    return TrainResult(model=setup.model, data=data, config=setup.config, metrics=metrics, out_dir=out_dir,
                       history=history.history)


def log_start(setup, log) -> None:
    """Say what a run starts from (with --from) and what its dev split is too small for."""
    if setup.started_from:
        new = setup.started_from["new_characters"]
        log(f"starting from {setup.started_from['run']}: its weights, and its vocabulary with "
            f"{len(new)} new character{'s' * (len(new) != 1)}" + (f" ({new})" if new else ""))
    note = dev_note(setup.data.num_names("dev"))
    if note:
        log(note)


def plan(setup, backup: backups.Backup, resume: bool, started: float, preset_name, log):
    """``(setup, budget)``: ``setup`` planned to its ``--minutes`` (budget None without), its rate
    set by ``--lr-passes`` from the plan, and its epochs ending at ``--stop-at``."""
    budget = None
    if setup.config.minutes is not None:
        setup, budget = fit_to_budget(setup, backup, resume, started, preset_name, log)
        setup = dataclasses.replace(setup, config=rate_for_plan(setup.config, setup.plan, setup.data))
    setup = until_stop(setup)
    log(as_ran(setup).describe())
    if setup.config.lr_passes:
        passes = setup.plan.steps / setup.data.steps_per_epoch(setup.config.batch_size)
        log(f"rate: --lr {setup.config.lr:.3g}, that is --lr-passes {setup.config.lr_passes:g} over "
            f"{passes:g} passes over the train split")
    return setup, budget


def early_stopping(setup, backup: backups.Backup, start_epoch: int) -> list[EarlyStopping]:
    """The run's early stopping (see :func:`patience_steps`) as a list of one callback, or none."""
    patience = patience_steps(setup.config.early_stopping, bool(setup.config.start_from),
                              setup.data.num_names("train"), setup.plan.steps, setup.plan.steps_per_epoch)
    if not patience:
        return []
    return [EarlyStopping(patience, setup.plan.steps_per_epoch, folder=backup.path,
                          dev_losses=backup.dev_losses() if start_epoch else ())]


def early_stopping_summary(record: dict) -> str:
    stopped = f"stopped at step {record['stopped_at_step']:,}" if record["stopped_at_step"] else "ran to the end"
    return (f"early stopping (patience {record['patience_steps']:,} steps): {stopped}; kept the weights "
            f"of step {record['best_step']:,}, the best dev loss")
