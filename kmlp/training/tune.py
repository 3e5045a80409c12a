"""Hyperparameter search on the dev split with KerasTuner: ``kmlp tune``.

    kmlp tune --max-trials 20 --max-minutes 30 --steps 4000 --out tuning/

Each trial trains one configuration of the search space (:func:`declare_space`) from the same
setup as ``kmlp train`` (:func:`kmlp.training.setup.prepare`: model, optimizer, plan, rate schedule, chunks
of steps in one XLA call) and is scored by its loss on the dev split. KerasTuner's oracle picks the configurations:
Hyperband (the default) trains many for a ninth or a third of ``--steps`` and only the most promising
for all of them; random search trains every one for ``--steps``.

The test split is never read: the data a trial sees holds the train and dev splits only.

TensorFlow's thread count is fixed for the whole process, so the search keeps its default (all
cores), which suits the larger models of the space; ``kmlp train`` picks one thread for small models.

``--out`` receives, rewritten after every trial so that a search cut short still leaves them whole:

    results.csv / results.md    one row per trial: parameters, params count, train / dev loss, seconds
    best_config.json            the best configuration so far, with the full ``--steps`` (Hyperband's
                                shorter trials included), for ``kmlp train --config FILE``
    tuner/                      KerasTuner's own record of the trials
    logs/TRIAL/execution0/      each trial's TensorBoard logs (see kmlp.training.logs), with its hyperparameters
                                and dev loss for TensorBoard's HParams tab: tensorboard --logdir tuning/logs
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_tuner
from keras_tuner.engine.trial import TrialStatus

from kmlp.config import Config, check_search
from kmlp.data.pipeline import NamesData
from kmlp.runs import folders, lock, manifest, rundir
from kmlp.training import logs
from kmlp.training.setup import EVAL_BATCH, evaluate_loss, plan_training, prepare
from kmlp.utils import atomic

# With schedule "step" the rate is cut by DECAY_FACTOR at these fractions of a trial's steps.
DECAY_FRACTIONS = (0.6, 0.85)
DECAY_FACTOR = 0.2
OBJECTIVE = "dev_loss"
# Hyperband's budgets, in ninths of --steps: trials of 1/9, 3/9 and 9/9 of the steps.
HYPERBAND_UNITS = 9
HYPERBAND_FACTOR = 3
# Columns of the results table after the searched parameters.
SCORE_COLUMNS = ("steps", "trial", "params", "train_loss", "dev_loss", "seconds", "status")
BEST_CONFIG = "best_config.json"
# What a search writes into its folder (tuner/ is KerasTuner's own record, rewritten each search).
OUT_ENTRIES = frozenset({"results.csv", "results.md", BEST_CONFIG, "tuner", rundir.LOGS_DIR})
KIND = "tune"  # its output folder's kind (kmlp.runs.manifest.KINDS)


def declare_space(hp: keras_tuner.HyperParameters, arch: str = "mlp") -> keras_tuner.HyperParameters:
    """The knobs of the search: the model's shape, its regularisation and the optimiser. For the
    ``hierarchical`` model the context is ``fuse ** n_layers`` characters (4, 8, 9 or 27), not a knob."""
    if arch == "hierarchical":
        hp.Fixed("arch", "hierarchical")
        hp.Choice("fuse", [2, 3], default=2)
        hp.Int("n_layers", 2, 3, default=3)
    else:
        hp.Choice("block_size", [3, 5, 8, 12, 16], default=8)
    hp.Choice("n_embd", [10, 16, 24, 32, 48], default=24)
    hp.Choice("n_hidden", [128, 256, 512, 1024], default=512)
    if arch != "hierarchical":
        hp.Int("n_layers", 1, 3, default=1)
    hp.Choice("norm", ["none", "batch", "layer"], default="none")
    hp.Float("dropout", 0.0, 0.3, step=0.1, default=0.0)
    hp.Choice("batch_size", [64, 128, 256, 512], default=256)
    hp.Float("lr", 3e-4, 1e-2, sampling="log", default=3e-3)
    hp.Choice("schedule", ["step", "cosine"], default="step")
    hp.Choice("weight_decay", [0.0, 0.01, 0.1], default=0.0)  # AdamW's; 0 is plain Adam
    return hp


def config_for(values: dict, steps: int, seed: int = 42) -> Config:
    """The training configuration of one point of the search space, trained for ``steps`` steps."""
    values = {name: value for name, value in values.items() if not name.startswith("tuner/")}
    values["dropout"] = round(values["dropout"], 3)  # 0.30000000000000004 -> 0.3
    if values.get("arch") == "hierarchical":
        values["block_size"] = values["fuse"] ** values["n_layers"]
    steps = int(steps)
    cuts = [round(steps * f) for f in DECAY_FRACTIONS] if values["schedule"] == "step" else []
    return Config(
        **values,
        optimizer="adamw" if values["weight_decay"] else "adam",
        steps=steps, decay_at=[m for m in cuts if 1 <= m < steps], decay_factor=DECAY_FACTOR, seed=seed,
    )


def tuning_data(path, block_size: int, split_seed: int = Config.split_seed) -> NamesData:
    """The names file's train and dev splits; the test split is left out, so nothing here can read it."""
    return NamesData.from_file(path, block_size=block_size, split_seed=split_seed).only("train", "dev")


class Deadline(keras.callbacks.Callback):
    """Stop training once the clock (``time.monotonic()``) passes ``deadline``.

    Checked after every Keras batch (one compiled call of many optimizer steps), so a run stops
    within one call of the deadline; ``stopped`` tells whether it did.

    >>> model.fit(train, epochs=100, callbacks=[Deadline(time.monotonic() + 600)])
    """

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.stopped = False

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() >= self.deadline:
            self.stopped = True
            self.model.stop_training = True


def fit_and_score(config: Config, data: NamesData, deadline: float = math.inf, callbacks=(),
                  log_dir=None) -> dict:
    """Train ``config`` on ``data``'s train split and measure it: what one trial does.

    ``callbacks`` are more for ``fit``; with ``log_dir``, where a TensorBoard callback among them
    writes, the dev loss is logged there too once measured (``epoch_loss`` in ``validation``, at the
    last step: a trial does not validate while it trains).
    """
    setup = prepare(config, data, choose_threads=False, log=lambda *_: None)
    stop = Deadline(deadline)
    started = time.perf_counter()
    setup.fit([keras.callbacks.TerminateOnNaN(), stop, *callbacks], validate=False)
    seconds = time.perf_counter() - started
    steps = int(setup.model.optimizer.iterations)
    dev_loss = evaluate_loss(setup.model, data.dataset("dev", EVAL_BATCH))
    train_loss = evaluate_loss(setup.model, data.dataset("train", EVAL_BATCH, shuffle=False))
    if stop.stopped:
        status = f"stopped at the time limit after {steps:,} of {setup.plan.steps:,} steps"
    elif not (math.isfinite(train_loss) and math.isfinite(dev_loss)) or steps < setup.plan.steps:
        status = f"diverged at step {steps:,}"
    else:
        status = "ok"
    if log_dir:
        logs.write_scalars(Path(log_dir) / logs.VALIDATION, steps, epoch_loss=dev_loss)
    return {"params": int(setup.model.count_params()), "train_loss": train_loss, "dev_loss": dev_loss,
            "seconds": round(seconds, 1), "status": status}


class NamesTuner(keras_tuner.Tuner):
    """A KerasTuner tuner whose trials train kmlp models (see :func:`fit_and_score`).

    A trial trains for ``steps`` optimizer steps, or under Hyperband for its share of them
    (``tuner/epochs`` of :data:`HYPERBAND_UNITS`), from scratch. Trials whose training diverged or
    was cut by the time limit are reported to the oracle as failed, so they never count as the best.
    Once ``deadline`` has passed no new trial starts.
    """

    def __init__(self, oracle, data_path, steps: int, seed: int, deadline: float, on_result=None,
                 log=print, logs_dir=None, **kwargs):
        super().__init__(oracle=oracle, **kwargs)
        self.data_path, self.steps, self.seed, self.deadline = data_path, steps, seed, deadline
        self.on_result, self.log, self.logs_dir = on_result, log, logs_dir
        self._data: dict[int, NamesData] = {}

    def data_for(self, block_size: int) -> NamesData:
        if block_size not in self._data:
            self._data[block_size] = tuning_data(self.data_path, block_size)
        return self._data[block_size]

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        steps = self.steps
        if "tuner/epochs" in values:  # Hyperband's budget for this trial
            steps = max(1, round(self.steps * values["tuner/epochs"] / HYPERBAND_UNITS))
        config = config_for(values, steps, self.seed)
        data = self.data_for(config.block_size)
        callbacks, log_dir = [], None
        if self.logs_dir:
            callbacks = [logs.tensorboard(self.logs_dir, data.vocab, plan_training(config, data).epochs)]
            # KerasTuner's own layout, LOGS/TRIAL/execution0, and its callback for the HParams tab
            self._configure_tensorboard_dir(callbacks, trial)
            log_dir = callbacks[0].log_dir
            logs.write_config(Path(log_dir) / logs.TRAIN, config.to_dict())
        result = fit_and_score(config, data, deadline=self.deadline, callbacks=callbacks, log_dir=log_dir)
        if self.on_result:
            self.on_result(trial.trial_id, values, config, result)
        if result["status"] != "ok":
            raise keras_tuner.errors.FailedTrialError(result["status"])
        return {OBJECTIVE: result["dev_loss"]}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if trial.status == TrialStatus.INVALID:  # an error, not a bad score
            error = (trial.message or "").strip().splitlines() or ["no message"]
            self.log(f"trial {trial.trial_id} failed: {error[-1]}")
        if time.monotonic() >= self.deadline:
            # The oracle ends a search when it holds max_trials trials: that many are done now.
            self.oracle.max_trials = len(self.oracle.trials)


@dataclass
class TuneResult:
    rows: list[dict]
    best: dict | None           # the row with the lowest dev loss among completed trials
    best_config: Config | None  # the best trial's configuration with the full --steps
    out_dir: Path


def tune(data_path=None, out_dir="tuning", max_trials: int = 20, max_minutes: float = 60.0,
         steps: int = 4000, seed: int = 42, algorithm: str = "hyperband", log=print,
         arch: str = "mlp") -> TuneResult:
    """Search the space of :func:`declare_space` for ``arch`` (``mlp`` or ``hierarchical``) for the
    lowest dev loss; see the module docstring.

    ``out_dir`` may be new, empty or an earlier search's folder; anything else is refused before any
    work, and one process at a time writes it. Bad values raise :class:`ConfigError` naming the flag.
    """
    check_search(max_trials, max_minutes, steps, seed, algorithm, arch)
    out_dir = folders.check_out_dir(out_dir, kind=KIND)
    with lock.RunLock(out_dir):
        _clear(out_dir)
        return _search(data_path, out_dir, max_trials, time.monotonic() + 60.0 * max_minutes, steps,
                       seed, algorithm, log, arch)


def _clear(out_dir: Path) -> None:
    """Delete an earlier search's results, all of which its manifest lists (:func:`folders.check_out_dir`
    checked), before the new search writes its own; refuse if anything else appeared meanwhile."""
    if out_dir.is_dir() and manifest.remove_owned(out_dir):
        folders.check_out_dir(out_dir, kind=KIND)  # raises, naming what is not kmlp's
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_manifest(out_dir: Path) -> None:
    """List what the search has written so far: a search cut short is replaced by the next one."""
    manifest.write(out_dir, KIND, manifest.scan(out_dir, only=OUT_ENTRIES))


def _search(data_path, out_dir: Path, max_trials: int, deadline: float, steps: int, seed: int,
            algorithm: str, log, arch: str) -> TuneResult:
    space = declare_space(keras_tuner.HyperParameters(), arch)
    oracle_kwargs = dict(objective=keras_tuner.Objective(OBJECTIVE, "min"), hyperparameters=space,
                         seed=seed, max_consecutive_failed_trials=max_trials)
    if algorithm == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=HYPERBAND_UNITS, factor=HYPERBAND_FACTOR,
                                                     **oracle_kwargs)
    else:
        oracle = keras_tuner.oracles.RandomSearchOracle(**oracle_kwargs)
    # Every oracle stops creating trials once it holds max_trials (Hyperband takes no such argument).
    oracle.max_trials = max_trials

    rows: list[dict] = []
    state = {"best": None}

    def record(trial_id, values, config, result):
        row = {**{name: values[name] for name in space.values}, "steps": config.steps, "trial": trial_id,
               **result}
        rows.append(row)
        log(f"trial {trial_id}: dev loss {result['dev_loss']:.4f}  train loss {result['train_loss']:.4f}  "
            f"{result['params']:,} params  {config.steps:,} steps  {result['seconds']:.0f} s  "
            f"({result['status']})")
        best = state["best"]
        if result["status"] == "ok" and (best is None or result["dev_loss"] < best[0]["dev_loss"]):
            # The configuration in full, whatever share of --steps Hyperband gave this trial.
            state["best"] = (row, config_for(values, steps, seed))
            atomic.write_json(out_dir / BEST_CONFIG, state["best"][1].to_dict())
        write_tables(rows, list(space.values), out_dir)
        _write_manifest(out_dir)

    log(f"TensorBoard logs of every trial in {out_dir / rundir.LOGS_DIR}; watch with: tensorboard --logdir "
        f"{out_dir / rundir.LOGS_DIR}")
    tuner = NamesTuner(oracle, data_path=data_path, steps=steps, seed=seed, deadline=deadline,
                       on_result=record, log=log, logs_dir=out_dir / rundir.LOGS_DIR, directory=str(out_dir),
                       project_name="tuner", overwrite=True)
    # KerasTuner prints the traceback of every failed trial to stderr; each is reported by one line
    # (NamesTuner.on_trial_end) instead. A new model per trial retraces the training function,
    # which TensorFlow warns about.
    tf_level = logging.getLogger("tensorflow").level
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            tuner.search(verbose=0)
    finally:
        logging.getLogger("tensorflow").setLevel(tf_level)
        _write_manifest(out_dir)
    best_row, best_config = state["best"] or (None, None)
    return TuneResult(rows=rows, best=best_row, best_config=best_config, out_dir=out_dir)


def write_tables(rows: list[dict], parameters: list[str], out_dir: Path) -> None:
    """results.csv (every trial, in order) and results.md (the same, best dev loss first)."""
    columns = [*parameters, *SCORE_COLUMNS]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: _cell(c, row[c]) for c in columns} for row in rows)
    atomic.write_text(out_dir / "results.csv", text.getvalue())

    ranked = sorted(rows, key=lambda r: (r["status"] != "ok", r["dev_loss"]))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, row[c]) for c in columns) + " |" for row in ranked]
    atomic.write_text(out_dir / "results.md", "\n".join(lines) + "\n")


def _cell(column: str, value) -> str:
    if column.endswith("_loss"):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
