"""Time budgets (``kmlp train --minutes``): measure what the run costs here, plan its steps, and end
it early, at a call boundary, if the machine gets slower while it trains."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras

from kmlp.config import Config
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError
from kmlp.training import backup as backups, distributed, logs
from kmlp.training.callbacks.deadline import Deadline
from kmlp.training.callbacks.loss_curve import LossCurve
from kmlp.training.callbacks.state import restore_training_state, training_state
from kmlp.training.callbacks.stop_at import StopAt
from kmlp.training.callbacks.timing import StepTimer
from kmlp.training.results import save_run
from kmlp.training.setup import (EVAL_BATCH, MAX_STEPS_PER_CALL, PARALLEL_WORK, TRAIN_LOSS_EXAMPLES, Plan,
                                 Setup, evaluate_loss, plan_training, step_work)
from kmlp.utils import atomic

# The clock is read after every compiled call: a call of a --minutes run takes at most this share of
# its budget, so that the run can end in time when the machine gets slower.
CALL_SHARE = 0.02
# A run ends early only when it would overrun its budget by more than this share of it: a run going as
# planned is not cut a call short by a little noise in its timings.
SLACK = 0.02


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


def call_steps(config: Config, seconds_per_step: float, compiled=()) -> int:
    """Optimizer steps per call of a --minutes run: ``steps_per_call`` if set, else the most (up to
    the most a call runs) that take at most :data:`CALL_SHARE` of the budget at ``seconds_per_step``,
    or the largest of the ``compiled`` sizes that does (compiling another can take longer than the
    calls it would save). Its steps and milestones are planned on multiples of it."""
    most = max(1, min(MAX_STEPS_PER_CALL, int(CALL_SHARE * config.minutes * 60 / seconds_per_step)))
    return config.steps_per_call or max((size for size in compiled if size <= most), default=most)


def measure_cost(setup: Setup, started: float, preset_name: str | None = None,
                 rate_seconds: float = 1.0) -> RunCost:
    """Time, on the run's own model and data, what its training will cost, then put the model and
    optimizer back exactly as they were: the run that follows is the one ``--steps`` would give.

    A first fit of five epochs of two calls, with the evaluation on dev and the backups and logs of
    a run (into a scratch folder), times the first call (it compiles), the calls in the middle of an
    epoch, and what an epoch adds to them (the mean over the last four; the first one compiles the
    evaluation): see :class:`kmlp.training.callbacks.timing.StepTimer`. If its calls took less than
    ``rate_seconds``, a second fit times more of them. A large model is timed in calls of 5 steps
    (one of the most a call runs could take minutes). If the run's calls (:func:`call_steps`, from
    the speed the first fit found) must be shorter, the second fit times them, compiling them for the
    run. Last, the evaluation on dev and the saving of a run are timed (in the scratch folder); the
    evaluation on the train split is extrapolated from dev's by its number of batches. ``started`` is
    the ``time.perf_counter()`` value the run began at.
    """
    model, most = setup.model, setup.config.steps_per_call or MAX_STEPS_PER_CALL
    large = step_work(setup.config, len(setup.data.vocab)) >= PARALLEL_WORK
    first_chunk = min(most, 5) if large else most
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
            chunk = call_steps(setup.config, epochs.seconds_per_step, compiled=(first_chunk,))
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
    """Seconds of what follows training (:func:`measure`, :func:`save_run`), timed on a scratch run."""
    data = setup.data
    scored = {"train": min(data.num_examples("train"), TRAIN_LOSS_EXAMPLES), "dev": data.num_examples("dev")}
    batches = {split: math.ceil(examples / EVAL_BATCH) for split, examples in scored.items()}
    one = _seconds(evaluate_loss, setup.model, data.dataset("dev", EVAL_BATCH).take(1))  # (tracing included)
    dev = _seconds(evaluate_loss, setup.model, data.dataset("dev", EVAL_BATCH)) if batches["dev"] > 1 else one
    per_batch = max(0.0, dev - one) / (batches["dev"] - 1) if batches["dev"] > 1 else one
    began = time.perf_counter()
    save_run(setup, out_dir, {}, curve, backup, preset_name, log=lambda *_: None)
    backup.remove()
    return one + per_batch * (batches["train"] - 1) + dev + time.perf_counter() - began


def _seconds(function, *args) -> float:
    began = time.perf_counter()
    function(*args)
    return time.perf_counter() - began


def plan_minutes(config: Config, data: NamesData, cost: RunCost) -> Config:
    """``config`` with the most steps whose whole run, as ``cost`` predicts it, fits in
    ``config.minutes``: whole calls of :func:`call_steps` steps (of a size ``cost`` compiled, if one
    is short enough), evaluations spread as :func:`plan_training` spreads them, and each
    ``decay_at`` milestone at the same share of the run as in ``config.steps``. Raises ConfigError if
    not one call fits."""
    chunk = call_steps(config, cost.step, cost.compiled)
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
    200 at most) divide evenly or nearly: a prime number of calls would get one evaluation. Either
    as many epochs of fewer calls, or epochs of one call more: 33 calls over two evaluations are two
    epochs of 16, not one of 17."""
    if calls < 1:
        return calls
    epochs = min(calls, 200, max(1, round(calls * chunk / steps_per_pass)))
    per_epoch = math.ceil(calls / epochs)
    return max(calls // epochs * epochs, calls // per_epoch * per_epoch)


def _scaled(config: Config, steps: int, chunk: int) -> Config:
    """``config`` for ``steps`` steps in calls of ``chunk``, its milestones moved to the same share of
    the run (on a call boundary), ending where they do (not at an earlier run's ``stop_at``)."""
    share = steps / config.steps if config.decay_at else 1.0
    milestones = sorted({max(chunk, round(m * share / chunk) * chunk) for m in config.decay_at})
    per_call = config.steps_per_call or (0 if chunk == MAX_STEPS_PER_CALL else chunk)
    return config.replace(steps=steps, decay_at=milestones, steps_per_call=per_call, stop_at=None)


def repeat_flags(request: Config, planned: Config) -> str:
    """The flags that, in place of ``--minutes``, repeat the planned run exactly (up to where it
    stopped, if it fell behind its plan)."""
    flags = [f"--steps {planned.steps}"]
    if planned.stop_at:
        flags.append(f"--stop-at {planned.stop_at}")
    if planned.decay_at != request.decay_at:
        flags.append("--decay-at " + (",".join(map(str, planned.decay_at)) or "none"))
    if planned.steps_per_call != request.steps_per_call:
        flags.append(f"--steps-per-call {planned.steps_per_call}")
    return " ".join(flags)


def _kept_plan(backup: backups.Backup, request: Config) -> Config | None:
    """The configuration an interrupted --minutes run of ``request`` planned (and where it ended, if
    it fell behind), if its backup is here."""
    kept = backup.kept_identity()
    kept = Config.from_dict(kept["config"], source=str(backup.path)) if kept else None
    planned_alike = kept and kept.replace(steps=request.steps, decay_at=request.decay_at,
                                          steps_per_call=request.steps_per_call,
                                          stop_at=request.stop_at,
                                          lr=request.lr if request.lr_passes else kept.lr) == request
    return kept if planned_alike else None  # (with lr_passes, the rate too was planned)


@dataclass
class Budget:
    """A --minutes run's plan: what metrics.json records of it, and the deadline that ends the run
    early if it falls behind (none for a resumed run, which keeps the plan kept with its backup)."""

    request: Config             # as asked, before planning
    measured: dict = field(default_factory=dict)  # what measure_cost found, and the time it predicted
    deadline: Deadline | None = None

    def record(self, ran: Config) -> dict:
        """metrics.json's ``budget``, for the run that ran as ``ran`` (see :func:`as_ran`)."""
        stopped = {"stopped_at": ran.stop_at} if ran.stop_at else {}
        return {"minutes": self.request.minutes, "planned_steps": ran.steps, **stopped,
                "repeat_with": repeat_flags(self.request, ran), **self.measured}


def fit_to_budget(setup: Setup, backup: backups.Backup, resume: bool, started: float,
                  preset_name: str | None = None, log=print) -> tuple[Setup, Budget]:
    """``setup`` planned to end within its ``config.minutes`` (see :func:`measure_cost` and
    :func:`plan_minutes`), and its :class:`Budget`, whose deadline ends it early if it falls behind
    (see :func:`end_callbacks`). A resumed run keeps the steps it planned, and where it ended early if
    it did, kept with its backup; it has no deadline (its budget began in the process that planned it)."""
    request = setup.config
    if distributed.is_multi_worker(setup.strategy):
        raise ConfigError("--minutes plans the steps from one process's speed; with --strategy multi-worker "
                          "give every worker the same --steps")
    kept = _kept_plan(backup, request) if resume else None
    if kept:
        log(f"resuming a --minutes {request.minutes:g} run: it keeps the {kept.steps:,} steps it planned"
            + (f" and ends at step {kept.stop_at:,}, where it fell behind" if kept.stop_at else ""))
        return replace(setup, config=kept, plan=plan_training(kept, setup.data)), Budget(request)
    log(f"--minutes {request.minutes:g}: timing a few steps, an evaluation and a save on this machine")
    budget = request.minutes * 60
    cost = measure_cost(setup, started, preset_name, rate_seconds=min(5.0, max(0.5, budget / 100)))
    planned = plan_minutes(request, setup.data, cost)
    setup = replace(setup, config=planned, plan=plan_training(planned, setup.data))
    predicted = cost.seconds(setup.plan)
    log(f"planned {planned.steps:,} steps to end in {predicted:.0f} s of {budget:g} s ({cost.describe()}); "
        f"{repeat_flags(request, planned)} in place of --minutes repeats this run exactly")
    measured = {"predicted_seconds": round(predicted, 3), **cost.to_json()}
    stop = _recorded_stop(setup, request, backup, log)
    return setup, Budget(request, measured, deadline_for(request, cost, started, on_stop=stop))


def deadline_for(request: Config, cost: RunCost, started: float, on_stop=None) -> Deadline:
    """The :class:`Deadline` of a run of ``request`` begun at ``started`` (a ``time.perf_counter()``
    value) that ``cost`` measured: it ends the run early if, as fast as its latest calls ran, going on
    would end more than :data:`SLACK` of the budget after it."""
    budget = request.minutes * 60
    return Deadline(started + budget, seconds_per_step=cost.step, seconds_per_evaluation=cost.evaluation,
                    seconds_to_finish=cost.finish, slack=SLACK * budget, window=CALL_SHARE * budget,
                    on_stop=on_stop)


def _recorded_stop(setup: Setup, request: Config, backup: backups.Backup, log):
    """What the deadline of ``setup``'s run (planned for ``request``) does when it ends the run: say
    so, and put where it ended into the backup's identity at once, before the backup keeps the epoch
    it ended in, so that a run interrupted then resumes as the run it became."""
    def stop(step: int, slowdown: float) -> None:
        ended = until_stop(replace(setup, config=setup.config.replace(stop_at=step)))
        log(f"fell behind the plan: the last calls took {slowdown:.2f} times the time measured before "
            f"training; the run ends at step {step:,} of {setup.plan.steps:,} to end within "
            f"{request.minutes * 60:g} s ({repeat_flags(request, ended.config)} in place of --minutes repeats it)")
        identity = backups.identity(ended.config, ended.data, ended.plan)
        atomic.write_json(backup.path / backups.IDENTITY_FILE, identity)

    return stop


def end_callbacks(setup: Setup, budget: Budget | None) -> list[keras.callbacks.Callback]:
    """What ends ``setup``'s run before its planned steps: its ``stop_at``, its budget's deadline
    (last, so that the other callbacks' work counts in the time of a call)."""
    stops = [StopAt(setup.config.stop_at)] if setup.config.stop_at else []
    return stops + ([budget.deadline] if budget and budget.deadline else [])


def until_stop(setup: Setup) -> Setup:
    """``setup`` fitting only the epochs up to its ``config.stop_at``, if it has one (:class:`StopAt`
    ends the last one there); its plan's steps, which the learning-rate schedule spans, unchanged.
    (A run resumed from the epoch it stopped in then has nothing left to train.)"""
    stop, plan = setup.config.stop_at, setup.plan
    if not stop:
        return setup
    return replace(setup, plan=replace(plan, epochs=min(plan.epochs, math.ceil(stop / plan.steps_per_epoch))))


def as_ran(setup: Setup, budget: Budget | None = None) -> Setup:
    """``setup`` (see :func:`until_stop`) as its run ran, to record: the configuration that repeats it
    (no ``minutes``: its budget's record keeps them; ``stop_at`` where its budget's deadline ended it,
    if it did), and the plan's steps and evaluations up to where it ended. The configuration keeps
    the steps its schedule was planned for."""
    stopped = budget and budget.deadline and budget.deadline.stopped_at
    config = setup.config.replace(minutes=None, stop_at=stopped or setup.config.stop_at)
    if not config.stop_at:
        return replace(setup, config=config)
    plan = until_stop(replace(setup, config=config)).plan
    per_call = plan.steps_per_call  # StopAt stops at the end of the call that reaches stop_at
    return replace(setup, config=config,
                   plan=replace(plan, steps=min(plan.steps, math.ceil(config.stop_at / per_call) * per_call)))
