"""Time budgets (``kmlp train --minutes``): measure what the run costs here, then plan its steps."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from kmlp.config import Config
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError
from kmlp.training import backup as backups, distributed, logs
from kmlp.training.callbacks.loss_curve import LossCurve
from kmlp.training.callbacks.state import restore_training_state, training_state
from kmlp.training.callbacks.timing import StepTimer
from kmlp.training.results import save_run
from kmlp.training.setup import (EVAL_BATCH, MAX_STEPS_PER_CALL, PARALLEL_WORK, TRAIN_LOSS_EXAMPLES, Plan,
                                 Setup, evaluate_loss, plan_training, step_work)


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
    evaluation): see :class:`kmlp.training.callbacks.timing.StepTimer`. If its calls took less than
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
                                          steps_per_call=request.steps_per_call,
                                          lr=request.lr if request.lr_passes else kept.lr) == request
    return kept if planned_alike else None  # (with lr_passes, the rate too was planned)


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
