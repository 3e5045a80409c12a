"""Training: a Config and a names file in, a run directory out.

``train()`` is what ``kmlp train`` runs: it builds the data pipeline and the model, calls
``model.fit`` on the train split with the dev split as validation, evaluates both splits in full,
and writes the run directory (see :mod:`kmlp.runs`) only once everything has succeeded.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import tensorflow as tf

from . import plots, runs
from .runs import TrainingDiverged  # noqa: F401  (defined there so the CLI loads without TensorFlow)
from .callbacks import CosineDecay, LossCurve, StepDecay
from .config import Config
from .data import NamesData
from .model import build_model, compile_model, make_optimizer

EVAL_BATCH = 4096
MAX_STEPS_PER_CALL = 250


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


def make_strategy(name: str = "default", devices: int = 0) -> tf.distribute.Strategy:
    """A ``tf.distribute`` strategy by name: ``default`` (one device) or ``mirrored`` (a copy of the
    model on every local device; each minibatch is split between them and the gradients summed).

    ``devices`` > 0 first splits the CPU into that many logical devices, so that ``mirrored`` runs
    on a machine without GPUs (for trying it out; on a CPU the copies share the same cores). That
    must happen before TensorFlow has run anything, so call this first.

    >>> strategy = make_strategy("mirrored", devices=2)
    >>> train(config, "names.txt", strategy=strategy)
    """
    if devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    raise ValueError(f"unknown strategy {name!r}; choose default or mirrored")


def default_out_dir(name: str) -> Path:
    return Path("saved_models") / name


def build_compiled_model(config: Config, vocab_size: int) -> keras.Model:
    """The configured model, compiled with the configured optimizer (at the initial rate)."""
    model = build_model(vocab_size=vocab_size, block_size=config.block_size, n_embd=config.n_embd,
                        n_hidden=config.n_hidden, n_layers=config.n_layers, dropout=config.dropout,
                        norm=None if config.norm == "none" else config.norm, init=config.init,
                        seed=config.seed, rdrop=config.rdrop, precision=config.precision)
    optimizer = make_optimizer(config.optimizer, config.lr, weight_decay=config.weight_decay)
    return compile_model(model, optimizer, jit_compile=config.jit_compile)


def rate_callbacks(config: Config, plan: Plan) -> list[keras.callbacks.Callback]:
    """The learning-rate schedule of ``config`` as callbacks: step decay at ``decay_at`` or a cosine
    over the whole run, and with ``plateau_patience`` a cut by ``decay_factor`` whenever dev loss has
    not improved for that many evaluations (the schedule goes on from the cut rate)."""
    if config.schedule == "cosine":
        schedule = CosineDecay(config.lr, plan.steps)
    else:
        schedule = StepDecay(config.lr, config.decay_at, config.decay_factor)
    if not config.plateau_patience:
        return [schedule]
    return [schedule, keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=config.decay_factor, patience=config.plateau_patience)]


# Weights x batch size above which one optimizer step is worth splitting across cores.
PARALLEL_WORK = 50_000_000


def set_op_threads(config: Config, vocab_size: int) -> None:
    """Run each TensorFlow op on one thread for small models, on all cores for large ones, unless
    threads were already configured.

    The lecture's matrices are far too small to be worth splitting: on 2 cores one thread per op
    trains it faster and with about half the CPU time (see benchmarks/bench_train.py), and the input
    pipeline keeps its own threads. The ``best`` preset's steps (670k weights, batch 1024) are large
    enough that two threads ran them 1.2 to 1.8 times as fast as one here. TensorFlow accepts the setting
    only before it starts; once it runs, the setting stays as it is.
    """
    weights = count_weights(config, vocab_size)
    rows = config.batch_size * (2 if config.rdrop else 1)  # R-Drop runs each minibatch twice
    if tf.config.threading.get_intra_op_parallelism_threads() == 0 and weights * rows < PARALLEL_WORK:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already started
            pass


def count_weights(config: Config, vocab_size: int) -> int:
    """Weights of the configured model's matrices (biases and normalisation left out)."""
    width = config.block_size * config.n_embd
    hidden = width * config.n_hidden + (config.n_layers - 1) * config.n_hidden ** 2
    return vocab_size * config.n_embd + hidden + config.n_hidden * vocab_size


def train(config: Config, data_path=None, out_dir=None, preset_name: str | None = None,
          callbacks=(), verbose: int = 1, log=print, data: NamesData | None = None,
          resume: bool = False, strategy: tf.distribute.Strategy | None = None) -> "TrainResult":
    """Train a model as configured and write its run directory; returns the result.

    ``data`` is the already loaded ``data_path``, if the caller has it. ``callbacks`` are extra Keras
    callbacks for ``model.fit``. Raises :class:`TrainingDiverged` (and saves nothing) if the loss
    blows up.

    Every epoch is backed up beside the run (:func:`kmlp.runs.backup_dir`, Keras's
    ``BackupAndRestore``); if the process dies, the same call with ``resume=True`` continues from
    the last completed epoch, with the same minibatches an uninterrupted run would have seen. The
    backup is deleted once the run is saved. ``strategy`` (see :func:`make_strategy`) spreads each
    minibatch over several devices.
    """
    config.validate()
    started = time.perf_counter()
    if data is None:
        data = NamesData.for_config(data_path, config)
    set_op_threads(config, len(data.vocab))
    keras.utils.set_random_seed(config.seed)
    log(f"data: {data.path}; {data.summary()}")
    out_dir = Path(out_dir) if out_dir else default_out_dir(preset_name or "custom")
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        # The chunked step (several optimizer steps per call) does not scale the loss per replica,
        # Keras's own one-step train_step does; XLA cannot compile a step whose variables live on
        # several devices ("Trying to access resource ... located in device CPU:1").
        config = config.replace(steps_per_call=1, jit_compile=False)

    with strategy.scope():
        model = build_compiled_model(config, len(data.vocab))
    plan = plan_training(config, data)
    log(f"model: {model.count_params():,} parameters; {plan.steps:,} steps at batch {config.batch_size} "
        f"({plan.epochs} evaluations on dev, {plan.steps_per_call} steps per compiled call"
        + (f", {strategy.num_replicas_in_sync} devices)" if strategy.num_replicas_in_sync > 1 else ")"))

    backup = runs.backup_dir(out_dir)
    start_epoch = _prepare_backup(backup, resume, _backup_identity(config, data, plan), log)
    start_step = start_epoch * plan.steps_per_epoch
    staging = None  # created only to save into, so a killed run leaves no partial folder behind
    try:
        train_ds = data.dataset("train", config.batch_size, seed=config.seed,
                                steps_per_call=plan.steps_per_call, start_step=start_step)
        dev_ds = data.dataset("dev", EVAL_BATCH)
        curve = LossCurve()  # for loss.png
        # The history row (with the rate, logged by the rate callbacks) is written before the backup
        # records its epoch: a kill in between leaves an extra row, which a resume drops, rather
        # than a missing one.
        cbs = [*rate_callbacks(config, plan), curve,
               keras.callbacks.TerminateOnNaN(),
               keras.callbacks.CSVLogger(str(backup / runs.HISTORY_FILE), append=start_epoch > 0),
               keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True,
                                                delete_checkpoint=False),  # deleted once published
               *callbacks]
        fit_started = time.perf_counter()
        try:
            history = model.fit(train_ds, steps_per_epoch=plan.calls_per_epoch, epochs=plan.epochs,
                                validation_data=dev_ds, callbacks=cbs, verbose=verbose,
                                shuffle=False)  # the pipeline shuffles
        except KeyboardInterrupt:
            log(f"interrupted; the same command with --resume continues from the last completed "
                f"epoch (kept in {backup})")
            raise
        fit_seconds = time.perf_counter() - fit_started
        losses = history.history.get("loss", [])
        steps_done = int(model.optimizer.iterations.numpy())  # (int() fails on a MirroredVariable)
        if not all(math.isfinite(v) for v in losses) or steps_done < plan.steps:
            _diverged(f"loss became NaN or infinite at step {steps_done:,}", config, backup, out_dir)
        train_loss = evaluate_loss(model, data.dataset("train", EVAL_BATCH, shuffle=False))
        if not train_loss <= math.log(len(data.vocab)):  # NaN compares False too
            _diverged(f"train loss {train_loss:.4g} is worse than a uniform guess, "
                      f"{math.log(len(data.vocab)):.2f}", config, backup, out_dir)
        dev_loss = evaluate_loss(model, dev_ds)
        metrics = {
            "train_loss": train_loss,
            "dev_loss": dev_loss,
            "steps": steps_done,
            "seconds": round(fit_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
            "steps_per_second": round((plan.steps - start_step) / fit_seconds, 1),
            "params": int(model.count_params()),
            "epochs": plan.epochs,
            "batch_size": config.batch_size,
        }
        if start_step:
            metrics["resumed_at_step"] = start_step
        staging = runs.staging_dir(out_dir)
        shutil.copyfile(backup / runs.HISTORY_FILE, staging / runs.HISTORY_FILE)
        model.save(staging / runs.MODEL_FILE)
        plots.plot_training(staging, model, data.vocab, curve, staging / runs.HISTORY_FILE,
                            plan.steps_per_epoch,
                            title=f"Training curve: {preset_name or 'custom'}, {plan.steps:,} steps")
        runs.write_json(staging / runs.CONFIG_FILE, {
            "config": config.to_dict(),
            "vocab": data.vocab.to_json(),
            "data": str(data.path),
            "preset": preset_name,
        })
        runs.write_json(staging / runs.METRICS_FILE, metrics)
        runs.publish(staging, out_dir)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    steps_run = plan.steps - start_step
    log(f"train loss {train_loss:.4f}  dev loss {dev_loss:.4f}  "
        f"({steps_run:,} steps in {fit_seconds:.1f} s, {steps_run / max(fit_seconds, 1e-9):,.0f} steps/s)")
    log(fit_verdict(train_loss, dev_loss))
    log(f"saved to {out_dir}")
    return TrainResult(model=model, data=data, config=config, metrics=metrics, out_dir=out_dir,
                       history=history.history)


def _diverged(what: str, config: Config, backup: Path, out_dir: Path):
    shutil.rmtree(backup, ignore_errors=True)  # its last epoch holds the broken weights
    raise TrainingDiverged(f"training diverged ({what}); try a smaller --lr (now {config.lr:g}); nothing "
                           f"was saved" + (f" and {out_dir} is unchanged" if out_dir.exists() else ""))


def _backup_identity(config: Config, data: NamesData, plan: Plan) -> dict:
    """What a backup must match to be resumed: the configuration, the plan and the training names."""
    train_names = "\n".join(data.words["train"]).encode("utf-8")
    return {"config": config.to_dict(), "plan": asdict(plan), "data": str(data.path),
            "train_sha256": hashlib.sha256(train_names).hexdigest()}


def _prepare_backup(backup: Path, resume: bool, identity: dict, log) -> int:
    """Check or start the backup folder of a run; returns the epoch training starts at.

    A backup left by an interrupted run is used only with ``resume`` and only by the same run; it is
    never silently discarded, since it may hold hours of training.
    """
    marker = backup / "run.json"
    epoch = _repair_backup(backup) if backup.exists() else None
    if backup.exists() and epoch is None:  # no epoch was completed: nothing to keep
        shutil.rmtree(backup)
    if backup.exists() and not resume:
        raise runs.RunError(f"{backup}: an interrupted training of this run is kept there; pass --resume "
                            f"to continue it, or delete the folder to start over")
    if not backup.exists():
        if resume:
            log(f"nothing to resume in {backup}; starting from step 0")
        backup.mkdir(parents=True)
        runs.write_json(marker, identity)
        return 0
    saved = runs.read_json(marker) if marker.exists() else {}
    if saved != identity:
        differ = sorted(k for k in set(saved.get("config", {})) | set(identity["config"])
                        if saved.get("config", {}).get(k) != identity["config"].get(k))
        what = f"options {', '.join(differ)} differ" if differ else "the data or the plan differ"
        raise runs.RunError(f"{backup}: the interrupted training there is another run ({what}); run "
                            f"the same command as before with --resume, or delete the folder")
    history = backup / runs.HISTORY_FILE
    if history.exists():  # keep the header and the rows of the epochs the backup holds
        rows = history.read_text(encoding="utf-8").splitlines(keepends=True)
        history.write_text("".join(rows[:1 + epoch]), encoding="utf-8")
    log(f"resuming from {backup}: {epoch} of {identity['plan']['epochs']} epochs done")
    return epoch


def _backup_epoch(metadata: Path) -> int | None:
    """The epoch a BackupAndRestore metadata file records, or None if it is missing or unreadable."""
    try:
        return int(json.loads(metadata.read_text(encoding="utf-8"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _repair_backup(backup: Path) -> int | None:
    """Undo a save that a kill cut short; returns the epoch the backup then holds (None: no epoch).

    BackupAndRestore (with ``double_checkpoint``) copies the weights and metadata to ``*.bkp``, then
    writes new weights, then new metadata. Killed while writing the metadata, it leaves new weights
    beside an empty metadata file: the previous pair is put back (a kill during the weights is
    already handled by Keras, which falls back to the ``*.bkp`` weights). With no previous pair, the
    first epoch never finished saving, and the metadata goes, so the run starts over.
    """
    metadata = backup / "training_metadata.json"
    weights = backup / "latest.weights.h5"
    epoch = _backup_epoch(metadata)
    if epoch is not None or not metadata.exists():
        return epoch
    previous_metadata, previous_weights = (Path(f"{p}.bkp") for p in (metadata, weights))
    previous_epoch = _backup_epoch(previous_metadata)
    if previous_epoch is not None and previous_weights.exists():
        shutil.copyfile(previous_weights, weights)
        shutil.copyfile(previous_metadata, metadata)
        return previous_epoch
    metadata.unlink()
    return None


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

    def add_batch(sums, batch):
        x, y = batch
        losses = keras.losses.sparse_categorical_crossentropy(y, model(x, training=False), from_logits=True)
        return sums[0] + tf.reduce_sum(tf.cast(losses, tf.float64)), sums[1] + tf.size(y, tf.int64)

    # Dataset.reduce runs the whole loop as one graph: no Python (or eager op dispatch) per batch.
    total, count = dataset.reduce((tf.constant(0.0, tf.float64), tf.constant(0, tf.int64)), add_batch)
    return float(total) / max(int(count), 1)
