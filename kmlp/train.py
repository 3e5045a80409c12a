"""Training: a Config and a names file in, a run directory out.

:func:`prepare` turns a configuration and its data into a run ready to ``fit`` (seed, threads,
strategy, compiled model, plan, learning-rate callbacks); ``kmlp train`` (:func:`train`), each
``kmlp tune`` trial and ``kmlp lr-find`` all start from it. :func:`train` fits on the train split
with the dev split as validation, evaluates both, and writes the run directory (see
:mod:`kmlp.runs`) only once everything has succeeded.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import tensorflow as tf

from . import backup as backups
from . import distributed, logs, plots, runs
from .callbacks import (CosineDecay, LossCurve, Progress, StepDecay, StepTimer, restore_training_state,
                        training_state)
from .config import Config, ConfigError
from .data import NamesData, file_sha256
from .model import build_model, compile_model, make_optimizer
from .runs import TrainingDiverged

EVAL_BATCH = 4096
TRAIN_LOSS_EXAMPLES = 250_000  # a larger train split is scored on a fixed sample of this many examples
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
    divisors = [d for d in range(1, min(calls, 200) + 1) if calls % d == 0]
    epochs = min(divisors, key=lambda d: (abs(d - target_epochs), d))
    return Plan(steps=steps, steps_per_call=per_call, calls_per_epoch=calls // epochs, epochs=epochs)


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


def make_strategy(name: str = "default", devices: int = 0) -> tf.distribute.Strategy:
    """A ``tf.distribute`` strategy by name: ``default`` (one device), ``mirrored`` (a copy of the
    model on every local device; each minibatch is split between them and the gradients summed) or
    ``multi-worker`` (the same over the machines ``TF_CONFIG`` names, see :mod:`kmlp.distributed`).

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
    if name == "multi-worker":
        return distributed.multi_worker_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose default, mirrored or multi-worker")


def build_compiled_model(config: Config, vocab_size: int) -> keras.Model:
    """The configured model, compiled with the configured optimizer (at the initial rate)."""
    model = build_model(vocab_size=vocab_size, block_size=config.block_size, n_embd=config.n_embd,
                        n_hidden=config.n_hidden, n_layers=config.n_layers, dropout=config.dropout,
                        norm=config.norm, init=config.init, seed=config.seed, rdrop=config.rdrop,
                        precision=config.precision)
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
    only before it starts; once it runs, the setting stays as it is. With a GPU the model's ops run
    there, and the CPU's threads are left as TensorFlow sets them.
    """
    small = step_work(config, vocab_size) < PARALLEL_WORK
    if (tf.config.threading.get_intra_op_parallelism_threads() == 0 and small
            and not tf.config.list_physical_devices("GPU")):
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already started
            pass


def step_work(config: Config, vocab_size: int) -> int:
    """Weights times rows of one optimizer step: how large a step is (see :data:`PARALLEL_WORK`)."""
    rows = config.batch_size * (2 if config.rdrop else 1)  # R-Drop runs each minibatch twice
    return count_weights(config, vocab_size) * rows


def count_weights(config: Config, vocab_size: int) -> int:
    """Weights of the configured model's matrices (biases and normalisation left out)."""
    width = config.block_size * config.n_embd
    hidden = width * config.n_hidden + (config.n_layers - 1) * config.n_hidden ** 2
    return vocab_size * config.n_embd + hidden + config.n_hidden * vocab_size


@dataclass
class Setup:
    """A run ready to ``fit``: its configuration (as it will run), data, compiled model and plan."""

    config: Config
    data: NamesData
    model: keras.Model
    plan: Plan
    strategy: tf.distribute.Strategy

    def train_dataset(self, start_step: int = 0, steps_per_call: int | None = None):
        """The shuffled train split, chunked as the plan says (``steps_per_call`` overrides it)."""
        per_call = self.plan.steps_per_call if steps_per_call is None else steps_per_call
        return self.data.dataset("train", self.config.batch_size, seed=self.config.seed,
                                 steps_per_call=per_call, start_step=start_step)

    def fit(self, callbacks=(), start_epoch: int = 0, validate: bool = True, verbose: int = 0):
        """``model.fit`` as planned, with the rate schedule first, then ``callbacks`` (under a
        MultiWorkerMirroredStrategy, which fit cannot run, :func:`kmlp.distributed.fit` instead)."""
        if distributed.is_multi_worker(self.strategy):
            return distributed.fit(self, [*rate_callbacks(self.config, self.plan), *callbacks],
                                   self.data.dataset("dev", EVAL_BATCH) if validate else None,
                                   start_epoch, verbose)
        return self.model.fit(
            self.train_dataset(start_step=start_epoch * self.plan.steps_per_epoch),
            steps_per_epoch=self.plan.calls_per_epoch, epochs=self.plan.epochs,
            validation_data=self.data.dataset("dev", EVAL_BATCH) if validate else None,
            callbacks=[*rate_callbacks(self.config, self.plan), *callbacks], verbose=verbose,
            shuffle=False)  # the pipeline shuffles

    def describe(self) -> str:
        devices, epochs = self.strategy.num_replicas_in_sync, self.plan.epochs
        return (f"model: {self.model.count_params():,} parameters; {self.plan.steps:,} steps at batch "
                f"{self.config.batch_size} ({epochs} evaluation{'s' * (epochs != 1)} on dev, "
                f"{self.plan.steps_per_call} steps per compiled call"
                + (f", {devices} devices)" if devices > 1 else ")"))


def prepare(config: Config, data: NamesData, strategy: tf.distribute.Strategy | None = None,
            choose_threads: bool = True, log=print) -> Setup:
    """Everything up to ``fit``: checks, op threads (see :func:`set_op_threads`), seed, the compiled
    model under ``strategy``, and the plan.

    The configuration is adjusted where it cannot run as given, and the change logged: a batch
    larger than the train split is the whole split; several devices run one optimizer step per call,
    without XLA (the chunked step does not scale the loss per replica, and XLA cannot compile a step
    whose variables live on several devices); several workers run chunks without XLA.
    """
    config.validate()
    if data.block_size != config.block_size or data.split_seed != config.split_seed:
        raise ConfigError(f"the data was built for --block-size {data.block_size} and --split-seed "
                          f"{data.split_seed}, the configuration has {config.block_size} and "
                          f"{config.split_seed}; load it with NamesData.for_config(path, config)")
    examples = data.num_examples("train")
    if config.batch_size > examples:
        log(f"--batch-size {config.batch_size} is more than the {examples:,} training examples: "
            f"every step uses all of them")
        config = config.replace(batch_size=examples)
    strategy = strategy or tf.distribute.get_strategy()
    if distributed.is_multi_worker(strategy):
        config = config.replace(jit_compile=False)
    elif strategy.num_replicas_in_sync > 1:
        config = config.replace(steps_per_call=1, jit_compile=False)
    if choose_threads:
        set_op_threads(config, len(data.vocab))
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_compiled_model(config, len(data.vocab))
    return Setup(config=config, data=data, model=model, plan=plan_training(config, data), strategy=strategy)


# ---------------------------------------------------------------------------------------------
# Time budgets (kmlp train --minutes): measure what the run costs here, then plan its steps


@dataclass
class RunCost:
    """What a run costs on this machine, measured before it trains (see :func:`measure_cost`)."""

    before: float      # seconds from the run's start to its first training call
    step: float        # seconds per optimizer step, its callbacks included
    evaluation: float  # seconds an epoch adds: the evaluation on dev, backup, logs, a cold first call
    finish: float      # seconds after training: losses on the whole splits, saving, pictures
    compile: float     # seconds the first call of a chunk size not compiled yet adds
    compiled: tuple    # chunk sizes (optimizer steps per call) compiled while measuring

    def seconds(self, plan: Plan) -> float:
        """The whole run's predicted seconds with ``plan``."""
        compile = 0.0 if plan.steps_per_call in self.compiled else self.compile
        return self.before + compile + plan.steps * self.step + plan.epochs * self.evaluation + self.finish

    def describe(self) -> str:
        return (f"{1 / self.step:,.1f} steps/s, {self.evaluation:.2f} s per evaluation, "
                f"{self.before:.1f} s to start and {self.finish:.1f} s to finish")

    def to_json(self) -> dict:
        return {"seconds_per_step": self.step, "seconds_per_evaluation": round(self.evaluation, 4),
                "seconds_before_training": round(self.before, 3), "seconds_to_finish": round(self.finish, 3),
                "seconds_to_compile": round(self.compile, 3)}


def budget_chunk(config: Config) -> int:
    """Optimizer steps per call of a --minutes run: ``steps_per_call`` if set, else the most a call
    runs (its steps and milestones are then planned on multiples of it)."""
    return config.steps_per_call or MAX_STEPS_PER_CALL


def measure_cost(setup: Setup, started: float, preset_name: str | None = None,
                 rate_seconds: float = 1.0) -> RunCost:
    """Time, on the run's own model and data, what its training will cost, then put the model and
    optimizer back exactly as they were: the run that follows is the one ``--steps`` would give.

    A first fit of five epochs of two calls, with the evaluation on dev and the backups and logs of
    a run (into a scratch folder), times the first call (it compiles), the calls in the middle of an
    epoch, and what an epoch adds to them (the mean over the last four; the first one compiles the
    evaluation): see :class:`kmlp.callbacks.StepTimer`. If its calls took less than
    ``rate_seconds``, a second fit times more of them. A large model is timed in calls of 5 steps
    (one of the run's size could take minutes), and in calls of the run's size only if one of those
    turns out to take less than ``rate_seconds``. Last, the evaluation on dev and the saving of a run
    are timed (in the scratch folder); the evaluation on the train split is extrapolated from dev's
    by its number of batches. ``started`` is the ``time.perf_counter()`` value the run began at.
    """
    model, chunk = setup.model, budget_chunk(setup.config)
    large = step_work(setup.config, len(setup.data.vocab)) >= PARALLEL_WORK
    first_chunk = min(chunk, 5) if large else chunk
    with setup.strategy.scope():
        saved = training_state(model)
    try:
        with tempfile.TemporaryDirectory(prefix="kmlp-measure-") as scratch:
            backup = backups.Backup(Path(scratch) / "run")
            backup.start(False, {}, log=lambda *_: None)
            curve, _, run_callbacks = backup.callbacks(0)
            calls = epochs = StepTimer()
            began = time.perf_counter()
            board = logs.tensorboard(backup.logs, setup.data.vocab, 5)  # a run's logs cost time too
            replace(setup, plan=Plan(10 * first_chunk, first_chunk, 2, 5)).fit([board, *run_callbacks, epochs])
            timed = epochs.first_call + epochs.seconds + sum(epochs.epoch_starts) + sum(epochs.epoch_ends)
            startup = time.perf_counter() - began - timed  # what fit does besides calls and epochs
            if chunk * epochs.seconds_per_step > rate_seconds:
                chunk = first_chunk
            if chunk != first_chunk or epochs.seconds < rate_seconds:
                calls = StepTimer(min_seconds=rate_seconds)
                endless = Plan(chunk * 10**6, chunk, 10**6, 1)  # (until ``calls`` stops it)
                replace(setup, plan=endless).fit([LossCurve(), calls], validate=False)
            finish = _time_finish(setup, Path(scratch) / "run", curve, backup, preset_name)
    finally:
        restore_training_state(model, saved)
    return RunCost(before=time.perf_counter() - started + max(startup, 0.0), step=calls.seconds_per_step,
                   evaluation=epochs.seconds_per_epoch(skip=1), finish=finish,
                   compile=max(0.0, epochs.first_call - epochs.first_steps * calls.seconds_per_step),
                   compiled=(first_chunk, chunk))


def _time_finish(setup: Setup, out_dir: Path, curve, backup, preset_name) -> float:
    """Seconds of what follows training (:func:`_measure`, :func:`_save_run`), timed on a scratch run."""
    data = setup.data
    scored = {"train": min(data.num_examples("train"), TRAIN_LOSS_EXAMPLES), "dev": data.num_examples("dev")}
    batches = {split: math.ceil(examples / EVAL_BATCH) for split, examples in scored.items()}
    one = _seconds(evaluate_loss, setup.model, data.dataset("dev", EVAL_BATCH).take(1))  # (tracing included)
    dev = _seconds(evaluate_loss, setup.model, data.dataset("dev", EVAL_BATCH)) if batches["dev"] > 1 else one
    per_batch = max(0.0, dev - one) / (batches["dev"] - 1) if batches["dev"] > 1 else one
    began = time.perf_counter()
    _save_run(setup, out_dir, {}, curve, backup, preset_name, log=lambda *_: None)
    backup.remove()
    return one + per_batch * (batches["train"] - 1) + dev + time.perf_counter() - began


def _seconds(function, *args) -> float:
    began = time.perf_counter()
    function(*args)
    return time.perf_counter() - began


def plan_minutes(config: Config, data: NamesData, cost: RunCost) -> Config:
    """``config`` with the most steps whose whole run, as ``cost`` predicts it, fits in
    ``config.minutes``: whole calls of :func:`budget_chunk` steps (of 10 if the budget holds less than
    one), evaluations spread as :func:`plan_training` spreads them, and each ``decay_at`` milestone
    at the same share of the run as in ``config.steps``. Raises ConfigError if not one call fits."""
    for chunk in dict.fromkeys((budget_chunk(config), min(budget_chunk(config), 10))):
        planned = _most_calls(config, data, cost, chunk)
        if planned:
            return planned
    shortest = cost.seconds(Plan(chunk, chunk, 1, 1))
    raise ConfigError(f"--minutes {config.minutes:g} is too short for this run on this machine: it takes "
                      f"{cost.before:.0f} s to start and {cost.finish:.0f} s to finish, and a call of "
                      f"{chunk} steps with one evaluation {chunk * cost.step + cost.evaluation:.1f} s; "
                      f"give at least --minutes {math.ceil(shortest / 6) / 10:g}")


def _most_calls(config: Config, data: NamesData, cost: RunCost, chunk: int) -> Config | None:
    """``config`` planned for the most calls of ``chunk`` steps that fit its budget (None if none do)."""
    budget, steps_per_pass = config.minutes * 60, data.steps_per_epoch(config.batch_size)

    def planned(calls: int) -> Config:
        return _scaled(config, _evenly_evaluated(calls, chunk, steps_per_pass) * chunk, chunk)

    low, high = 0, int(max(0.0, budget - cost.seconds(Plan(0, chunk, 0, 0))) / (chunk * cost.step)) + 1
    while high - low > 1:  # low fits (or is 0), high does not
        middle = (low + high) // 2
        fits = cost.seconds(plan_training(planned(middle), data)) <= budget
        low, high = (middle, high) if fits else (low, middle)
    return planned(low) if low else None


def _evenly_evaluated(calls: int, chunk: int, steps_per_pass: int) -> int:
    """The most calls up to ``calls`` that the evaluations :func:`plan_training` aims at (one a pass,
    200 at most) divide evenly or nearly: a prime number of calls would get one evaluation."""
    if calls < 1:
        return calls
    per_epoch = math.ceil(calls / min(200, max(1, round(calls * chunk / steps_per_pass))))
    return per_epoch * (calls // per_epoch)


def _scaled(config: Config, steps: int, chunk: int) -> Config:
    """``config`` for ``steps`` steps in calls of ``chunk``, its milestones moved to the same share of
    the run (on a call boundary)."""
    share = steps / config.steps if config.decay_at else 1.0
    milestones = sorted({max(chunk, round(m * share / chunk) * chunk) for m in config.decay_at})
    per_call = config.steps_per_call or (0 if chunk == MAX_STEPS_PER_CALL else chunk)
    return config.replace(steps=steps, decay_at=milestones, steps_per_call=per_call)


def repeat_flags(request: Config, planned: Config) -> str:
    """The flags that, in place of ``--minutes``, repeat the planned run exactly."""
    flags = [f"--steps {planned.steps}"]
    if planned.decay_at != request.decay_at:
        flags.append("--decay-at " + (",".join(map(str, planned.decay_at)) or "none"))
    if planned.steps_per_call != request.steps_per_call:
        flags.append(f"--steps-per-call {planned.steps_per_call}")
    return " ".join(flags)


def _kept_plan(backup: backups.Backup, request: Config) -> Config | None:
    """The configuration an interrupted --minutes run of ``request`` planned, if its backup is here."""
    kept = backup.kept_identity()
    kept = Config.from_dict(kept["config"], source=str(backup.path)) if kept else None
    planned_alike = kept and kept.replace(steps=request.steps, decay_at=request.decay_at,
                                          steps_per_call=request.steps_per_call) == request
    return kept if planned_alike else None


def fit_to_budget(setup: Setup, backup: backups.Backup, resume: bool, started: float,
                  preset_name: str | None = None, log=print) -> tuple[Setup, dict]:
    """``setup`` planned to end within its ``config.minutes`` (see :func:`measure_cost` and
    :func:`plan_minutes`), and the record of the plan for metrics.json. A resumed run keeps the
    steps it planned, kept with its backup."""
    request = setup.config
    if distributed.is_multi_worker(setup.strategy):
        raise ConfigError("--minutes plans the steps from one process's speed; with --strategy multi-worker "
                          "give every worker the same --steps")
    kept = _kept_plan(backup, request) if resume else None
    if kept:
        planned, record = kept, {}
        log(f"resuming a --minutes {request.minutes:g} run: it keeps the {planned.steps:,} steps it planned")
    else:
        log(f"--minutes {request.minutes:g}: timing a few steps, an evaluation and a save on this machine")
        budget = request.minutes * 60
        cost = measure_cost(setup, started, preset_name, rate_seconds=min(5.0, max(0.5, budget / 100)))
        planned = plan_minutes(request, setup.data, cost)
        predicted = cost.seconds(plan_training(planned, setup.data))
        record = {"predicted_seconds": round(predicted, 3), **cost.to_json()}
        log(f"planned {planned.steps:,} steps to end in {predicted:.0f} s of {budget:g} s "
            f"({cost.describe()}); {repeat_flags(request, planned)} in place of --minutes repeats this run "
            f"exactly")
    record = {"minutes": request.minutes, "planned_steps": planned.steps,
              "repeat_with": repeat_flags(request, planned), **record}
    return replace(setup, config=planned, plan=plan_training(planned, setup.data)), record


def train(config: Config, data_path=None, out_dir=None, preset_name: str | None = None,
          callbacks=(), verbose: int = 1, log=print, data: NamesData | None = None,
          resume: bool = False, strategy: tf.distribute.Strategy | None = None,
          started: float | None = None) -> "TrainResult":
    """Train a model as configured and write its run directory; returns the result.

    ``data`` is the already loaded ``data_path``, if the caller has it. ``callbacks`` are extra Keras
    callbacks for ``model.fit``. ``out_dir`` (default ``saved_models/<preset>``) may be new, empty or
    an earlier run, which is replaced (its exports are kept); anything else is refused before any
    work, and one process at a time writes it (:class:`kmlp.runs.RunLock`). Raises
    :class:`TrainingDiverged`, saving nothing, if the loss blows up.

    Every epoch is backed up beside the run (:mod:`kmlp.backup`); if the process dies, the same call
    with ``resume=True`` continues from the last completed epoch, with the same minibatches an
    uninterrupted run would have seen. ``strategy`` (see :func:`make_strategy`) spreads each
    minibatch over several devices; under a MultiWorkerMirroredStrategy only the chief writes
    ``out_dir``, and every other worker keeps its own lock and backup beside it
    (:func:`kmlp.distributed.worker_name`).

    With ``config.minutes`` the steps are planned so that the whole call ends within that many
    minutes, counted from ``started`` (a ``time.perf_counter()`` value; default: now), see
    :func:`fit_to_budget`; metrics.json records the plan under ``budget``. ``verbose`` shows the
    progress in optimizer steps (:class:`kmlp.callbacks.Progress`).
    """
    started = time.perf_counter() if started is None else started
    config.validate()
    worker = distributed.worker_name(strategy)  # None: this process writes the run
    out_dir = runs.check_out_dir(out_dir or runs.default_run_dir(preset_name or "custom"), worker=worker)
    with runs.RunLock(out_dir, worker):
        data = data or NamesData.for_config(data_path, config)
        log(f"data: {data.path}; {data.summary()}")
        setup = prepare(config, data, strategy, log=log)
        start_loss = evaluate_loss(setup.model, data.dataset("train", EVAL_BATCH, shuffle=False).take(1))
        backup = backups.Backup(out_dir, worker)
        setup, budget = (setup, None) if config.minutes is None else \
            fit_to_budget(setup, backup, resume, started, preset_name, log)
        log(setup.describe())
        expected = backups.identity(setup.config, data, setup.plan)
        start_epoch = distributed.agree_on_start(setup.strategy, backup, backup.start(resume, expected, log),
                                                 expected, log)
        curve, clock, backup_callbacks = backup.callbacks(start_epoch)
        # Before the backup's callbacks: an epoch's logs are on disk before the backup records the epoch.
        board = logs.tensorboard(backup.logs, data.vocab, setup.plan.epochs)
        if not start_epoch:
            logs.write_config(backup.logs / logs.TRAIN, {"preset": preset_name, "data": _data_location(data),
                                                         **setup.config.to_dict()})
        log(logs.watch_hint(backup.logs, out_dir))
        progress = [Progress(setup.plan.steps, earlier=clock.earlier)] if verbose else []
        fit_started = time.perf_counter()
        try:
            history = setup.fit([keras.callbacks.TerminateOnNaN(), board, *backup_callbacks, *progress, *callbacks],
                                start_epoch=start_epoch)
        except KeyboardInterrupt:
            log(f"interrupted; the same command with --resume continues from the last completed "
                f"epoch (kept in {backup.path})")
            raise
        fit_seconds = time.perf_counter() - fit_started
        _check_diverged(setup, curve, start_loss, backup, out_dir)
        metrics = _measure(setup, clock, start_epoch, fit_seconds, started)
        if budget:
            metrics["budget"] = budget
        if worker is None:
            _save_run(setup, out_dir, metrics, curve, backup, preset_name, log)
        backup.remove()
    steps_run = setup.plan.steps - start_epoch * setup.plan.steps_per_epoch
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


def _check_diverged(setup: Setup, curve, start_loss: float, backup, out_dir: Path) -> None:
    """Raise :class:`TrainingDiverged` (deleting the backup, whose last epoch holds the broken
    weights) if the training loss became NaN or infinite, or blew up: ended at more than twice
    where it started and twice a uniform guess. An undertrained model is not diverged."""
    steps_done = int(setup.model.optimizer.iterations.numpy())  # (int() fails on a MirroredVariable)
    end_loss = curve.losses[-1] if curve.losses else start_loss
    limit = 2 * max(start_loss, math.log(len(setup.data.vocab)))
    if steps_done < setup.plan.steps or not math.isfinite(end_loss):
        what = f"the loss became NaN or infinite by step {steps_done:,}"
    elif end_loss > limit:
        what = f"the training loss rose from {start_loss:.4g} to {end_loss:.4g}"
    else:
        return
    backup.remove()
    raise TrainingDiverged(f"training diverged ({what}); try a smaller --lr (now {setup.config.lr:g}); "
                           f"nothing was saved" + (f" and {out_dir} is unchanged" if out_dir.exists() else ""))


def _measure(setup: Setup, clock, start_epoch: int, fit_seconds: float, started: float) -> dict:
    """metrics.json: the losses on the whole dev split and on the train split (or, when it is large,
    a fixed sample of :data:`TRAIN_LOSS_EXAMPLES` of its examples), and what the run took."""
    steps_run = setup.plan.steps - start_epoch * setup.plan.steps_per_epoch
    data = setup.data
    metrics = {
        "train_loss": evaluate_loss(setup.model, data.dataset("train", EVAL_BATCH, shuffle=False,
                                                              sample=TRAIN_LOSS_EXAMPLES)),
        "train_loss_examples": min(data.num_examples("train"), TRAIN_LOSS_EXAMPLES),  # all, or a sample
        "train_examples": data.num_examples("train"),
        "dev_loss": evaluate_loss(setup.model, data.dataset("dev", EVAL_BATCH)),
        "steps": int(setup.model.optimizer.iterations.numpy()),
        "seconds": round(clock.seconds, 3),  # training time of the whole run, resumed parts included
        "total_seconds": round(time.perf_counter() - started, 3),  # this process: data to metrics
        "steps_per_second": round(steps_run / max(fit_seconds, 1e-9), 1),
        "params": int(setup.model.count_params()),
        "epochs": setup.plan.epochs,
        "batch_size": setup.config.batch_size,
    }
    if start_epoch:
        metrics["resumed_at_step"] = start_epoch * setup.plan.steps_per_epoch
    return metrics


def _save_run(setup: Setup, out_dir: Path, metrics: dict, curve, backup, preset_name, log) -> None:
    """Write the run into a hidden folder beside ``out_dir``, then put it in place (kmlp.runs.publish)."""
    data = setup.data
    staging = runs.staging_dir(out_dir)
    try:
        shutil.copyfile(backup.history, staging / runs.HISTORY_FILE)
        logs.copy(backup.logs, staging / runs.LOGS_DIR)
        setup.model.save(staging / runs.MODEL_FILE)
        plots.plot_training(staging, setup.model, data.vocab, curve, staging / runs.HISTORY_FILE,
                            setup.plan.steps_per_epoch,
                            title=f"Training curve: {preset_name or 'custom'}, {setup.plan.steps:,} steps")
        runs.write_json(staging / runs.CONFIG_FILE, {
            "config": setup.config.to_dict(),
            "vocab": data.vocab.to_json(),
            "data": _data_location(data),
            "data_sha256": file_sha256(data.path) if data.path else None,
            "preset": preset_name,
        })
        runs.write_json(staging / runs.METRICS_FILE, metrics)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    left = runs.publish(staging, out_dir)
    if left:
        log(f"files put into {out_dir} during the training are not kmlp's; they are kept in {left}")


def _data_location(data: NamesData) -> str | None:
    return str(Path(data.path).absolute()) if data.path else None


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
