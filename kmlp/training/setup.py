"""Everything up to ``fit``: a configuration and its data in, a compiled model and a plan out.

:func:`prepare` turns a configuration and its data into a :class:`Setup` ready to ``fit`` (seed,
threads, strategy, compiled model, plan, learning-rate callbacks); ``kmlp train``, each ``kmlp
tune`` trial and ``kmlp lr-find`` all start from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import tensorflow as tf

from kmlp.config import Config, check_devices
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError
from kmlp.models.mlp import build_model, compile_model, make_optimizer
from kmlp.runs import start
from kmlp.shapes import hidden_layers
from kmlp.training import distributed
from kmlp.training.callbacks.schedules import CosineDecay, StepDecay

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


# A run of fewer passes than this over the train split gets --lr-passes' rate for this many: a
# higher one would exceed the presets' own.
RATE_MIN_PASSES = 5


def rate_for_plan(config: Config, plan: Plan, data: NamesData) -> Config:
    """``config`` with, if it sets ``lr_passes``, the rate that gives: ``lr_passes`` over the passes
    over the train split ``plan`` makes (at least :data:`RATE_MIN_PASSES`)."""
    if config.lr_passes is None:
        return config
    passes = plan.steps / data.steps_per_epoch(config.batch_size)
    return config.replace(lr=config.lr_passes / max(passes, RATE_MIN_PASSES))


def make_strategy(name: str = "default", devices: int = 0) -> tf.distribute.Strategy:
    """A ``tf.distribute`` strategy by name: ``default`` (one device), ``mirrored`` (a copy of the
    model on every local device; each minibatch is split between them and the gradients summed) or
    ``multi-worker`` (the same over the machines ``TF_CONFIG`` names, see :mod:`kmlp.training.distributed`).

    ``devices`` > 0 first splits the CPU into that many logical devices, so that ``mirrored`` runs
    on a machine without GPUs (for trying it out; on a CPU the copies share the same cores). That
    must happen before TensorFlow has run anything, so call this first.

    >>> strategy = make_strategy("mirrored", devices=2)
    >>> train(config, "names.txt", strategy=strategy)
    """
    if check_devices(devices):
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
                        precision=config.precision, arch=config.arch, fuse=config.fuse,
                        norm_momentum=config.norm_momentum, norm_epsilon=config.norm_epsilon)
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
    return count_weights(config, vocab_size, uses=True) * rows


def count_weights(config: Config, vocab_size: int, uses: bool = False) -> int:
    """Weights of the configured model's matrices (biases and normalisation left out); with ``uses``,
    each counted as often as one example uses it (a hierarchical level's, once per group it fuses)."""
    layers = hidden_layers(config.block_size, config.n_embd, config.n_hidden, config.n_layers, config.arch,
                           config.fuse)
    hidden = sum(inputs * (positions if uses else 1) * config.n_hidden for inputs, positions in layers)
    return vocab_size * config.n_embd + hidden + config.n_hidden * vocab_size


@dataclass
class Setup:
    """A run ready to ``fit``: its configuration (as it will run), data, compiled model and plan."""

    config: Config
    data: NamesData
    model: keras.Model
    plan: Plan
    strategy: tf.distribute.Strategy
    started_from: dict | None = None  # the run its weights came from (kmlp.runs.start.start_model)

    def train_dataset(self, start_step: int = 0, steps_per_call: int | None = None):
        """The shuffled train split, chunked as the plan says (``steps_per_call`` overrides it)."""
        per_call = self.plan.steps_per_call if steps_per_call is None else steps_per_call
        return self.data.dataset("train", self.config.batch_size, seed=self.config.seed,
                                 steps_per_call=per_call, start_step=start_step)

    def fit(self, callbacks=(), start_epoch: int = 0, validate: bool = True, verbose: int = 0):
        """``model.fit`` as planned, with the rate schedule first, then ``callbacks`` (under a
        MultiWorkerMirroredStrategy, which fit cannot run, :func:`kmlp.training.distributed.fit` instead)."""
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
    larger than the train split is the whole split; a fine-tuning runs calls of a pass
    (:func:`kmlp.runs.start.pass_calls`); ``lr_passes`` sets the rate (:func:`rate_for_plan`);
    several devices run one optimizer step per call, without XLA (the chunked step does not scale
    the loss per replica, and XLA cannot compile a step whose variables live on several devices);
    several workers run chunks without XLA.
    """
    if config.start_from:  # the run's vocabulary, then the list's new characters
        data = start.extend_data(data, start.check_architecture(config))
    if data.block_size != config.block_size or data.split_seed != config.split_seed:
        raise ConfigError(f"the data was built for --block-size {data.block_size} and --split-seed "
                          f"{data.split_seed}, the configuration has {config.block_size} and "
                          f"{config.split_seed}; load it with NamesData.for_config(path, config)")
    examples = data.num_examples("train")
    if config.batch_size > examples:
        log(f"--batch-size {config.batch_size} is more than the {examples:,} training examples: "
            f"every step uses all of them")
        config = config.replace(batch_size=examples)
    config = start.pass_calls(config, data.steps_per_epoch(config.batch_size), MAX_STEPS_PER_CALL)
    strategy = strategy or tf.distribute.get_strategy()
    if distributed.is_multi_worker(strategy):
        config = config.replace(jit_compile=False)
    elif strategy.num_replicas_in_sync > 1:
        config = config.replace(steps_per_call=1, jit_compile=False)
    if choose_threads:
        set_op_threads(config, len(data.vocab))
    plan = plan_training(config, data)
    config = rate_for_plan(config, plan, data)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_compiled_model(config, len(data.vocab))
        started_from = start.start_model(model, config, data) if config.start_from else None
    return Setup(config=config, data=data, model=model, plan=plan, strategy=strategy, started_from=started_from)


def evaluate_loss(model: keras.Model, dataset) -> float:
    """Mean cross-entropy over a whole (finite) dataset, weighting every example equally."""

    def add_batch(sums, batch):
        x, y = batch
        losses = keras.losses.sparse_categorical_crossentropy(y, model(x, training=False), from_logits=True)
        return sums[0] + tf.reduce_sum(tf.cast(losses, tf.float64)), sums[1] + tf.size(y, tf.int64)

    # Dataset.reduce runs the whole loop as one graph: no Python (or eager op dispatch) per batch.
    total, count = dataset.reduce((tf.constant(0.0, tf.float64), tf.constant(0, tf.int64)), add_batch)
    return float(total) / max(int(count), 1)
