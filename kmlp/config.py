"""Configuration: one small dataclass for a training run, named presets of it, and the rules every
option is checked by (without loading TensorFlow, so that the command line reports a mistake at once).

Each rule is one function, used by the Python API and the command line alike; it raises
:class:`ConfigError` with a message naming the option as the command line spells it, or, for a value
read from a configuration file, the file and its key (:class:`kmlp.naming.Naming`). Every count must be one that
TensorFlow represents (int64), and a training must fit in this machine's memory
(:func:`check_fits_in_memory`, estimated from the options together).
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

from kmlp.errors import ConfigError
from kmlp.naming import FLAGS, Naming, is_int as _is_int, option_key as _key, shown as _shown
from kmlp.shapes import ARCHS, FUSE, check_fusing, hidden_layers
from kmlp.utils.jsonfile import read_json

MAX_SEED = 2**32 - 1  # what numpy's and Python's generators (seeded by keras.utils.set_random_seed) take
MAX_INT64 = 2**63 - 1  # TensorFlow counts steps and sizes in int64: a larger count cannot be represented


MAX_VERSION = 2**63 - 1  # TensorFlow Serving's model versions are int64


def check_version(value, flag: str = "--version") -> int:
    """``value`` if it is an export version (an integer from 1 to :data:`MAX_VERSION`), else
    :class:`ConfigError`."""
    if not _is_int(value) or not 1 <= value <= MAX_VERSION:
        raise ConfigError(f"{flag} must be an integer from 1 to {MAX_VERSION} (TensorFlow Serving's "
                          f"versions are int64), got {value!r}")
    return int(value)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_seed(value, flag: str = "--seed", naming: Naming = FLAGS) -> int:
    """``value`` if it is a valid seed (an integer from 0 to :data:`MAX_SEED`), else :class:`ConfigError`."""
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise naming.bad(flag, f"must be an integer from 0 to {MAX_SEED}", value)
    return value


def check_integer(value, flag: str, least: int = 1, naming: Naming = FLAGS, bits: int = 64) -> int:
    """``value`` if it is an integer from ``least`` that TensorFlow represents (in ``bits``-bit
    integers: :data:`MAX_INT64` for counts of steps and sizes)."""
    if not _is_int(value) or value < least:
        rule = {0: "must be 0 or a positive integer", 1: "must be a positive integer"}.get(
            least, f"must be an integer of at least {least}")
        raise naming.bad(flag, rule, value)
    if value >= 2 ** (bits - 1):
        raise naming.bad(flag, f"must be below 2**{bits - 1} (TensorFlow takes it as int{bits})", value)
    return int(value)


def check_positive_int(value, flag: str, naming: Naming = FLAGS) -> int:
    return check_integer(value, flag, 1, naming)


def check_positive_number(value, flag: str, naming: Naming = FLAGS) -> float:
    if not _is_number(value) or not (math.isfinite(value) and value > 0):
        raise naming.bad(flag, "must be a positive number", value)
    return float(value)


def _check_non_negative(value, flag: str, naming: Naming) -> None:
    if not _is_number(value) or not (math.isfinite(value) and value >= 0):
        raise naming.bad(flag, "must be a number >= 0", value)


NORMS = ("none", "batch", "layer")
INITS = ("glorot", "normal", "kaiming", "fan_in")
PRECISIONS = ("float32", "mixed_bfloat16")  # Keras dtype policies a model can be built with
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine")


def _check_choice(value, flag: str, options, naming: Naming) -> None:
    if not isinstance(value, str) or value not in options:
        raise naming.bad(flag, f"must be {', '.join(options[:-1])} or {options[-1]}", value)


def check_model_options(block_size=3, n_embd=10, n_hidden=200, n_layers=1, dropout=0.0, rdrop=0.0,
                        norm="none", init="glorot", precision="float32", naming: Naming = FLAGS,
                        arch="mlp", fuse=FUSE, norm_momentum=0.99, norm_epsilon=1e-3) -> None:
    """The rules for the model's shape and regularisation, for :meth:`Config.validate` and
    :func:`kmlp.models.mlp.build_model` alike; :class:`ConfigError` names the flag."""
    _check_choice(arch, "--arch", ARCHS, naming)
    check_integer(fuse, "--fuse", least=2, naming=naming)
    for flag, value in (("--block-size", block_size), ("--n-embd", n_embd), ("--n-hidden", n_hidden),
                        ("--n-layers", n_layers)):
        check_positive_int(value, flag, naming)
    if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise naming.bad("--dropout", "must be in [0, 1)", dropout)
    _check_non_negative(rdrop, "--rdrop", naming)
    if rdrop and not dropout:
        rdrop_flag, dropout_flag = naming.option("--rdrop"), naming.option("--dropout")
        raise naming.error(f"{rdrop_flag} needs {dropout_flag} above 0 (without dropout its two passes "
                           f"agree); {rdrop_flag} 0 trains without either", "--rdrop", "--dropout")
    _check_choice(norm, "--norm", NORMS, naming)
    _check_choice(init, "--init", INITS, naming)
    _check_choice(precision, "--precision", PRECISIONS, naming)
    if not _is_number(norm_momentum) or not 0.0 <= norm_momentum < 1.0:
        raise naming.bad("--norm-momentum", "must be in [0, 1)", norm_momentum)
    check_positive_number(norm_epsilon, "--norm-epsilon", naming)
    check_fusing(arch, fuse, block_size, n_layers, naming)


def check_optimizer_options(optimizer="sgd", lr=0.1, weight_decay=0.0, naming: Naming = FLAGS) -> None:
    """The rules for the optimizer, for :meth:`Config.validate` and :func:`kmlp.models.mlp.make_optimizer`."""
    _check_choice(optimizer, "--optimizer", OPTIMIZERS, naming)
    check_positive_number(lr, "--lr", naming)
    _check_non_negative(weight_decay, "--weight-decay", naming)


def check_range_test(start_lr, end_lr, num_steps, memory: int | None = None) -> None:
    """The rules for the learning-rate range test (``kmlp lr-find``,
    :class:`kmlp.training.callbacks.lr_finder.LRFinder`), whose rates and losses, one of each per
    step, must fit in ``memory`` bytes (default: this machine's)."""
    check_positive_number(start_lr, "--start-lr")
    check_positive_number(end_lr, "--end-lr")
    if end_lr <= start_lr:
        raise ConfigError(f"--end-lr ({end_lr:g}) must be above --start-lr ({start_lr:g})")
    check_integer(num_steps, "--num-steps", least=2)
    check_kept_in_memory(num_steps, RANGE_TEST_BYTES_PER_STEP, "--num-steps", "the rates and losses of the "
                         "range test", memory)


def check_run_length(steps=200_000, epochs=None, minutes=None, decay_at=(), stop_at=None,
                     naming: Naming = FLAGS) -> None:
    """The rules for how long a run trains: ``steps``; or ``epochs`` (passes over the train split)
    instead; or a time budget, ``minutes``, whose steps are planned on the machine that runs it (with
    ``steps`` then only the length that the ``decay_at`` milestones are placed for). ``stop_at`` ends a
    run of ``steps`` before them, its schedule still the one planned for them (with ``minutes``: where
    a budget's run ended early, as its backup keeps it)."""
    if stop_at is not None:
        check_positive_int(stop_at, "--stop-at", naming)
        if epochs is not None or not (_is_int(steps) and stop_at < steps):
            raise naming.error(f"{naming.option('--stop-at')} ends a run of {naming.option('--steps')} before "
                               f"its last step, so it must be below them; got {stop_at} with "
                               + (f"{naming.option('--epochs')} {epochs}" if epochs is not None else
                                  f"{naming.option('--steps')} {naming.value(steps, '--steps')}"),
                               "--stop-at", "--steps", "--epochs")
    if minutes is None:
        if epochs is None:
            check_positive_int(steps, "--steps", naming)
        else:
            check_positive_int(epochs, "--epochs", naming)
        return
    check_positive_number(minutes, "--minutes", naming)
    if epochs is not None:
        check_one_length({"minutes", "epochs"}, naming)
    if decay_at and not (_is_int(steps) and steps >= 1):
        raise naming.error(f"{naming.option('--decay-at')} with {naming.option('--minutes')} needs "
                           f"{naming.option('--steps')}, the run length its milestones are placed for "
                           f"(they are scaled to the planned steps), got {naming.value(steps, '--steps')}",
                           "--decay-at", "--minutes", "--steps")
    if steps is not None:
        check_positive_int(steps, "--steps", naming)


LENGTHS = ("steps", "epochs", "stop_at")  # the options that set how long a run trains, besides minutes


def check_one_length(given, naming: Naming = FLAGS) -> None:
    """A time budget and a length never come from one source: ``given`` names the options that the
    flags of ``kmlp train``, or the keys of one ``--config`` file, set (a file's null is not set).
    A --minutes run records the --steps (and --stop-at) that repeat it; a length from another source
    (a preset's, a file's under a --minutes flag) is only the one its milestones are placed for."""
    lengths = [key for key in LENGTHS if key in given]
    if "minutes" in given and lengths:
        flag = "--" + lengths[0].replace("_", "-")
        raise naming.error(f"{naming.option('--minutes')} and {naming.option(flag)} both set how long the run "
                           f"trains; give one (a --minutes run records in metrics.json the --steps that "
                           f"repeat it exactly)", "--minutes", flag)


SEARCH_ALGORITHMS = ("hyperband", "random")


def check_search(max_trials, max_minutes, steps, seed, algorithm, arch="mlp") -> None:
    """The rules for a hyperparameter search (``kmlp tune``, :func:`kmlp.training.tune.tune`)."""
    _check_choice(arch, "--arch", ARCHS, FLAGS)
    check_positive_int(max_trials, "--max-trials")
    check_positive_number(max_minutes, "--max-minutes")
    check_positive_int(steps, "--steps")
    check_seed(seed, "--seed")
    _check_choice(algorithm, "--algorithm", SEARCH_ALGORITHMS, FLAGS)


MAX_DEVICES = 64  # logical CPUs for trying --strategy mirrored: each holds a copy of the model


def check_devices(devices) -> int:
    """``devices`` if it is a number of logical CPU devices kmlp may split the CPU into (0: none)."""
    if not _is_int(devices) or not 0 <= devices <= MAX_DEVICES:
        raise ConfigError(f"--devices must be an integer from 0 (the devices as the machine has them) to "
                          f"{MAX_DEVICES}, got {devices!r}")
    return devices


# Memory. What a training needs at least is estimated from the options together, and refused before
# anything is built when this machine's physical memory cannot hold it. The estimate counts only
# what must exist at once, so it errs low: a refused run could never fit, an accepted one may not.

FLOAT_BYTES = 4  # weights and activations are float32 (bfloat16 products keep float32 weights)
INDEX_BYTES = 4  # a minibatch holds int32 character indices
MIN_VOCAB = 2  # the boundary and one character: the smallest vocabulary, before the data is read
LIST_SLOT_BYTES = 8  # a list holds a pointer to each item
# The range test keeps, per step, its rate in a float64 array and a rate, a loss and a smoothed loss
# as Python floats in lists.
RANGE_TEST_BYTES_PER_STEP = 8 + 3 * (LIST_SLOT_BYTES + sys.getsizeof(0.0))
NAME_BYTES = LIST_SLOT_BYTES + sys.getsizeof("")  # the least a name kept in a list takes


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_kept_in_memory(count: int, bytes_each: int, flag: str, what: str, memory: int | None = None) -> None:
    """Refuse a ``count`` (given by ``flag``) of things of ``bytes_each`` bytes, kept in memory at
    once, that cannot fit in ``memory`` bytes (default: this machine's)."""
    memory = machine_memory() if memory is None else memory
    if memory and count * bytes_each > memory:
        raise ConfigError(f"{flag} {count}: {what} would take at least {_size(count * bytes_each)} of "
                          f"memory, more than this machine's {_size(memory)}")


def parameter_count(vocab_size: int, block_size: int, n_embd: int, n_hidden: int, n_layers: int,
                    norm: str = "none", arch: str = "mlp", fuse: int = FUSE) -> int:
    """The model's parameters (batch normalisation's moving statistics included)."""
    v, e, h, n = vocab_size, n_embd, n_hidden, n_layers
    per_layer = {"none": h, "batch": 4 * h, "layer": 2 * h}[norm]  # biases, or the norm's
    dense = sum(inputs * h for inputs, _ in hidden_layers(block_size, e, h, n, arch, fuse))
    return v * e + dense + n * per_layer + h * v + v


MODEL_FLAGS = ("--block-size", "--n-embd", "--n-hidden", "--n-layers")


def check_model_size(vocab_size: int, block_size: int, n_embd: int, n_hidden: int, n_layers: int,
                     norm: str = "none", memory: int | None = None, arch: str = "mlp", fuse: int = FUSE) -> None:
    """Refuse a model whose weights alone cannot fit in ``memory`` (default: this machine's), for
    :func:`kmlp.models.mlp.build_model`; a training needs more (:func:`check_fits_in_memory`)."""
    memory = machine_memory() if memory is None else memory
    size = parameter_count(vocab_size, block_size, n_embd, n_hidden, n_layers, norm, arch, fuse) * FLOAT_BYTES
    if memory and size > memory:
        knobs = dict(zip(MODEL_FLAGS, (block_size, n_embd, n_hidden, n_layers)))
        raise _too_large("a model", knobs, size, "its weights", memory, f"vocabulary of {vocab_size} tokens")


def training_memory(config: "Config", vocab_size: int = MIN_VOCAB) -> list[tuple[str, int, tuple]]:
    """``(what, bytes at least, the flags it grows with)`` for each part of a training's memory."""
    slots = 2 if config.optimizer in ("adam", "adamw") else 0  # Adam's two moments; plain SGD none
    shape = (config.block_size, config.n_embd, config.n_hidden, config.n_layers)
    params = parameter_count(vocab_size, *shape, config.norm, config.arch, config.fuse)
    # Per example: its embeddings, each hidden layer's outputs and gradients, the logits and theirs;
    # with R-Drop every example goes through the network twice.
    outputs = sum(positions for _, positions in hidden_layers(*shape, config.arch, config.fuse))
    row = config.block_size * config.n_embd + 2 * outputs * config.n_hidden + 2 * vocab_size
    activations = row * FLOAT_BYTES * config.batch_size * (2 if config.rdrop else 1)
    chunk = max(1, config.steps_per_call) * config.batch_size * (config.block_size + 1) * INDEX_BYTES
    return [
        ("the weights, their gradients and the optimizer's state", params * FLOAT_BYTES * (2 + slots),
         (*MODEL_FLAGS, "--optimizer")),
        ("one minibatch's activations", activations, ("--batch-size", *MODEL_FLAGS, "--rdrop")),
        ("the minibatches of one compiled call", chunk, ("--steps-per-call", "--batch-size", "--block-size")),
    ]


def check_fits_in_memory(config: "Config", vocab_size: int | None = None, memory: int | None = None,
                         naming: Naming = FLAGS) -> None:
    """Refuse a training of ``config`` that cannot fit in ``memory`` bytes (default: this machine's
    physical memory), with a vocabulary of ``vocab_size`` tokens (None: not known yet, so the
    smallest there is, :data:`MIN_VOCAB`). The message names the flags of the largest part."""
    memory = machine_memory() if memory is None else memory
    parts = training_memory(config, vocab_size or MIN_VOCAB)
    total = sum(size for _, size, _ in parts)
    if memory and total > memory:
        what, size, flags = max(parts, key=lambda part: part[1])
        knobs = {flag: getattr(config, _key(flag)) for flag in flags}
        vocabulary = f"vocabulary of {vocab_size} tokens" if vocab_size else \
            f"vocabulary of {MIN_VOCAB} tokens, the smallest"
        raise _too_large("a training", knobs, total, f"{_size(size)} for {what}", memory, vocabulary, naming)


def _too_large(subject: str, knobs: dict, need: int, detail: str, memory: int, vocabulary: str,
               naming: Naming = FLAGS) -> ConfigError:
    shown = ", ".join(f"{naming.option(flag)} {naming.value(value, flag)}" for flag, value in knobs.items())
    return naming.error(f"{subject} with {shown} needs at least {_size(need)} of memory ({detail}; with a "
                        f"{vocabulary}), more than this machine's {_size(memory)}", *knobs)


def _size(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


@dataclass
class Config:
    """Everything that defines a training run. The defaults are the lecture's model and recipe."""

    # model
    arch: str = "mlp"            # mlp or hierarchical (kmlp.shapes)
    fuse: int = FUSE             # positions each hierarchical level fuses (block_size = fuse ** n_layers)
    block_size: int = 3          # characters of context
    n_embd: int = 10             # embedding size per character
    n_hidden: int = 200          # units per hidden tanh layer
    n_layers: int = 1            # hidden tanh layers
    dropout: float = 0.0         # dropout after each hidden layer
    rdrop: float = 0.0           # R-Drop: run each minibatch twice (two dropout masks) and add this
                                 # times the symmetric KL between the two predictions to the loss
    norm: str = "none"           # normalisation before each tanh: none, batch or layer
    init: str = "glorot"         # dense weights: glorot, or normal (N(0, 1) as in the lecture), or
                                 # kaiming / fan_in (the lecture's parts 3 / 5, see build_model)
    norm_momentum: float = 0.99  # batch norm's moving statistics keep this share at each step
    norm_epsilon: float = 1e-3   # added to the variance a normalisation divides by
    precision: str = "float32"   # float32, or mixed_bfloat16: float32 weights, bfloat16 products
    # optimisation
    batch_size: int = 32
    steps: int | None = 200_000  # optimizer steps (ignored when epochs is set; see minutes)
    epochs: int | None = None    # passes over the train split, instead of steps
    minutes: float | None = None # time budget for the whole run, evaluations and saving included:
                                 # its steps are planned on the machine (decay_at scaled from steps)
    stop_at: int | None = None   # end at the call that reaches this step, the schedule still the
                                 # one planned for steps (where a --minutes run ended early)
    optimizer: str = "sgd"       # sgd, adam or adamw
    lr: float = 0.1
    weight_decay: float = 0.0    # decoupled weight decay, applied by every optimizer
    decay_at: list[int] = field(default_factory=lambda: [100_000])  # steps where the rate is cut
    decay_factor: float = 0.1    # the rate is multiplied by this at each milestone
    schedule: str = "step"       # step (milestones above) or cosine
    plateau_patience: int = 0    # > 0: also cut the rate when dev loss stalls this many evaluations
    # run
    seed: int = 42               # initial weights, dropout and minibatch order
    split_seed: int = 42         # which names go to train/dev/test; kept apart from seed so that
                                 # runs with different seeds are scored on the same dev names
    steps_per_call: int = 0      # optimizer steps per compiled call; 0 picks one
    jit_compile: bool = True     # compile the training step with XLA
    start_from: str | None = None  # a run folder whose model (architecture and weights) training starts from
    early_stopping: int | None = None  # stop after this many steps without a better dev loss, keeping the
                                       # best weights; 0: off; None: on for --from and small lists
    lr_passes: float | None = None  # set: lr is this over the passes over the train split the run makes
                                    # (fine-tuning's rate: the shorter the run, the higher the rate)

    def __post_init__(self):
        self.validate()  # a Config is checked once, where it is made: everything downstream trusts it

    def validate(self, naming: Naming = FLAGS) -> "Config":
        """This configuration, if every value is in range; else :class:`ConfigError` naming the flag
        (or, with a file's ``naming``, the file and its key)."""
        check_options(self, naming)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str | None = None, naming: Naming | None = None) -> "Config":
        """A configuration of ``values`` (the defaults for the options it lacks). ``source`` names
        where they come from (a file: its errors name it and its keys, see :class:`Naming`)."""
        naming = naming or (Naming(file=source) if source else FLAGS)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            shown = ", ".join(k if k.isidentifier() else _shown(k) for k in unknown[:5])
            raise ConfigError(f"{source or 'configuration'}: unknown option(s): {shown}"
                              + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        check_options(SimpleNamespace(**{**{f.name: _default(f) for f in fields(cls)}, **values}), naming)
        return cls(**values)  # (checked again, by __post_init__: in this naming first)

    def replace(self, **changes) -> "Config":
        return Config.from_dict({**self.to_dict(), **changes})


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def check_options(c, naming: Naming = FLAGS) -> None:
    """Every rule of a configuration, on ``c`` (a :class:`Config`, or any object with its fields)."""
    check_model_options(block_size=c.block_size, n_embd=c.n_embd, n_hidden=c.n_hidden,
                        n_layers=c.n_layers, dropout=c.dropout, rdrop=c.rdrop, norm=c.norm,
                        init=c.init, precision=c.precision, naming=naming, arch=c.arch, fuse=c.fuse,
                        norm_momentum=c.norm_momentum, norm_epsilon=c.norm_epsilon)
    check_optimizer_options(c.optimizer, c.lr, c.weight_decay, naming)
    check_positive_int(c.batch_size, "--batch-size", naming)
    check_positive_number(c.decay_factor, "--decay-factor", naming)
    if not isinstance(c.decay_at, list) or not all(_is_int(s) and 1 <= s <= MAX_INT64 for s in c.decay_at):
        raise naming.bad("--decay-at", "takes positive step counts below 2**63", c.decay_at)
    check_run_length(c.steps, c.epochs, c.minutes, c.decay_at, c.stop_at, naming)
    _check_choice(c.schedule, "--schedule", SCHEDULES, naming)
    check_seed(c.seed, "--seed", naming)
    check_seed(c.split_seed, "--split-seed", naming)
    check_integer(c.steps_per_call, "--steps-per-call", 0, naming)
    check_integer(c.plateau_patience, "--plateau-patience", 0, naming)
    if c.plateau_patience and c.decay_factor >= 1:
        raise naming.error(f"{naming.option('--plateau-patience')} cuts the rate by "
                           f"{naming.option('--decay-factor')}, which must then be below 1, got "
                           f"{naming.value(c.decay_factor, '--decay-factor')}",
                           "--plateau-patience", "--decay-factor")
    if not isinstance(c.jit_compile, bool):
        raise naming.bad("--jit", "must be true or false", c.jit_compile)
    if c.start_from is not None and not (isinstance(c.start_from, str) and c.start_from):
        raise naming.bad("--from", "must be the folder of a run", c.start_from)
    if c.early_stopping is not None:
        check_integer(c.early_stopping, "--early-stopping", 0, naming)
    if c.lr_passes is not None:
        check_positive_number(c.lr_passes, "--lr-passes", naming)


# Named starting points for `kmlp train --preset NAME`; flags given on the command line override them.
PRESETS: dict[str, dict] = {
    # The lecture's recipe, exactly: its model with its N(0, 1) initial weights, 200k SGD steps at
    # batch 32, rate 0.1 then 0.01 (its dev loss, and Glorot's initial weights', are in the README).
    "lecture": dict(block_size=3, n_embd=10, n_hidden=200, init="normal", batch_size=32, steps=200_000,
                    optimizer="sgd", lr=0.1, decay_at=[100_000], decay_factor=0.1),
    # The lecture's parts 3 and 5, exactly (docs/lecture-series.md: what Keras's batch norm does
    # otherwise). Part 3's has no epsilon; Keras's needs one (without, a unit whose inputs are all
    # alike is NaN, not 0): 1e-10 changes no variance above 1e-3 in float32.
    "part3": dict(block_size=3, n_embd=10, n_hidden=200, norm="batch", init="kaiming",
                  norm_momentum=0.999, norm_epsilon=1e-10, batch_size=32, steps=200_000, optimizer="sgd",
                  lr=0.1, decay_at=[100_000], decay_factor=0.1),
    "part5": dict(arch="hierarchical", fuse=2, block_size=8, n_embd=24, n_hidden=128, n_layers=3,
                  norm="batch", init="fan_in", norm_momentum=0.9, norm_epsilon=1e-5, batch_size=32,
                  steps=200_000, optimizer="sgd", lr=0.1, decay_at=[150_000], decay_factor=0.1),
    # What `kmlp train` does with no flags, in a few minutes: the shape and recipe of "best" (R-Drop
    # included), in float32 with XLA, for 4,500 steps (25 passes over the data).
    "default": dict(block_size=8, n_embd=32, n_hidden=512, n_layers=3, norm="batch", dropout=0.15,
                    rdrop=1.0, batch_size=1024, steps=4_500, optimizer="adamw", lr=6e-3,
                    weight_decay=0.15, schedule="cosine", decay_at=[], decay_factor=0.2),
    # Dev loss <= 2.17 (the lecture's result) in seconds, whole process: a wider context, Adam at a
    # high rate cut twice, 1,200 steps at batch 256 (about 1.7 passes over the data).
    # Without XLA: compiling costs more than it saves in a run this short.
    "fast": dict(block_size=5, n_embd=16, n_hidden=256, batch_size=256, steps=1_200,
                 optimizer="adam", lr=1e-2, decay_at=[700, 1_000], decay_factor=0.2,
                 jit_compile=False),
    # Dev loss <= 1.95 in the least training time found: context 8, three 512-unit tanh layers with
    # batch norm, dropout 0.15 and R-Drop, AdamW on a cosine, 8k steps at batch 1024; bfloat16
    # products, without XLA (with it, bfloat16 steps are no faster than float32 ones).
    "best": dict(block_size=8, n_embd=32, n_hidden=512, n_layers=3, norm="batch", dropout=0.15,
                 rdrop=1.0, precision="mixed_bfloat16", jit_compile=False, batch_size=1024, steps=8_000,
                 optimizer="adamw", lr=6e-3, weight_decay=0.15, schedule="cosine", decay_at=[],
                 decay_factor=0.2),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return Config.from_dict(PRESETS[name], source=f"preset {name!r}")


def load_config_file(path: str | Path, base: Config | None = None) -> Config:
    """``base`` (default: :class:`Config`'s defaults) with the options a JSON file sets.

    The file holds some or all options (``kmlp tune`` writes all of them); a run's config.json, which
    holds them under ``"config"``, is accepted too. Options the file leaves out keep ``base``'s values.
    A file that sets both a time budget and a length is refused (:func:`check_one_length`).
    """
    values = read_json(path, expect=dict, error=ConfigError)
    if isinstance(values.get("config"), dict):
        values = values["config"]  # a run's config.json holds the configuration under "config"
    check_one_length({key for key, value in values.items() if value is not None}, Naming(file=path))
    base = base or Config()
    return Config.from_dict({**base.to_dict(), **values}, source=str(path))
