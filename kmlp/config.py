"""Configuration: one small dataclass for a training run, named presets of it, and the rules every
option is checked by (without loading TensorFlow, so that the command line reports a mistake at once).

Each rule is one function, used by the Python API and the command line alike; it raises
:class:`ConfigError` with a message naming the option as the command line spells it.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kmlp.errors import ConfigError

MAX_SEED = 2**32 - 1  # what numpy's and Python's generators (seeded by keras.utils.set_random_seed) take


def check_seed(value, flag: str = "--seed") -> int:
    """``value`` if it is a valid seed (an integer from 0 to :data:`MAX_SEED`), else :class:`ConfigError`."""
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{flag} must be an integer from 0 to {MAX_SEED}, got {value!r}")
    return value


MAX_VERSION = 2**63 - 1  # TensorFlow Serving's model versions are int64


def check_version(value, flag: str = "--version") -> int:
    """``value`` if it is an export version (an integer from 1 to :data:`MAX_VERSION`), else
    :class:`ConfigError`."""
    if not _is_int(value) or not 1 <= value <= MAX_VERSION:
        raise ConfigError(f"{flag} must be an integer from 1 to {MAX_VERSION} (TensorFlow Serving's "
                          f"versions are int64), got {value!r}")
    return int(value)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(value, flag: str) -> int:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
    return int(value)


def check_positive_number(value, flag: str) -> float:
    if not _is_number(value) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be a positive number, got {value!r}")
    return float(value)


NORMS = ("none", "batch", "layer")
INITS = ("glorot", "normal")
PRECISIONS = ("float32", "mixed_bfloat16")  # Keras dtype policies a model can be built with
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine")


def _choices(options) -> str:
    return ", ".join(options[:-1]) + " or " + options[-1]


def check_model_options(block_size=3, n_embd=10, n_hidden=200, n_layers=1, dropout=0.0, rdrop=0.0,
                        norm="none", init="glorot", precision="float32") -> None:
    """The rules for the model's shape and regularisation, for :meth:`Config.validate` and
    :func:`kmlp.models.mlp.build_model` alike; :class:`ConfigError` names the flag."""
    for flag, value in (("--block-size", block_size), ("--n-embd", n_embd), ("--n-hidden", n_hidden),
                        ("--n-layers", n_layers)):
        check_positive_int(value, flag)
    if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {dropout!r}")
    if not _is_number(rdrop) or not (math.isfinite(rdrop) and rdrop >= 0):
        raise ConfigError(f"--rdrop must be a number >= 0, got {rdrop!r}")
    if rdrop and not dropout:
        raise ConfigError("--rdrop needs --dropout above 0 (without dropout its two passes agree); "
                          "add --rdrop 0 to train without either")
    if norm not in NORMS:
        raise ConfigError(f"--norm must be {_choices(NORMS)}, got {norm!r}")
    if init not in INITS:
        raise ConfigError(f"--init must be {_choices(INITS)}, got {init!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be {_choices(PRECISIONS)}, got {precision!r}")


def check_optimizer_options(optimizer="sgd", lr=0.1, weight_decay=0.0) -> None:
    """The rules for the optimizer, for :meth:`Config.validate` and :func:`kmlp.models.mlp.make_optimizer`."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be {_choices(OPTIMIZERS)}, got {optimizer!r}")
    check_positive_number(lr, "--lr")
    if not _is_number(weight_decay) or not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"--weight-decay must be a number >= 0, got {weight_decay!r}")


def check_range_test(start_lr, end_lr, num_steps) -> None:
    """The rules for the learning-rate range test (``kmlp lr-find``,
    :class:`kmlp.training.callbacks.lr_finder.LRFinder`)."""
    check_positive_number(start_lr, "--start-lr")
    check_positive_number(end_lr, "--end-lr")
    if end_lr <= start_lr:
        raise ConfigError(f"--end-lr ({end_lr:g}) must be above --start-lr ({start_lr:g})")
    if not _is_int(num_steps) or num_steps < 2:
        raise ConfigError(f"--num-steps must be an integer of at least 2, got {num_steps!r}")


def check_run_length(steps=200_000, epochs=None, minutes=None, decay_at=()) -> None:
    """The rules for how long a run trains: ``steps``; or ``epochs`` (passes over the train split)
    instead; or a time budget, ``minutes``, whose steps are planned on the machine that runs it (with
    ``steps`` then only the length that the ``decay_at`` milestones are placed for)."""
    if minutes is None:
        if epochs is None:
            check_positive_int(steps, "--steps")
        else:
            check_positive_int(epochs, "--epochs")
        return
    check_positive_number(minutes, "--minutes")
    if epochs is not None:
        raise ConfigError("--minutes and --epochs both set how long the run trains; give one")
    if decay_at and not (_is_int(steps) and steps >= 1):
        raise ConfigError(f"--decay-at with --minutes needs --steps, the run length its milestones are "
                          f"placed for (they are scaled to the planned steps), got {steps!r}")


SEARCH_ALGORITHMS = ("hyperband", "random")


def check_search(max_trials, max_minutes, steps, seed, algorithm) -> None:
    """The rules for a hyperparameter search (``kmlp tune``, :func:`kmlp.training.tune.tune`)."""
    check_positive_int(max_trials, "--max-trials")
    check_positive_number(max_minutes, "--max-minutes")
    check_positive_int(steps, "--steps")
    check_seed(seed, "--seed")
    if algorithm not in SEARCH_ALGORITHMS:
        raise ConfigError(f"--algorithm must be {_choices(SEARCH_ALGORITHMS)}, got {algorithm!r}")


@dataclass
class Config:
    """Everything that defines a training run. The defaults are the lecture's model and recipe."""

    # model
    block_size: int = 3          # characters of context
    n_embd: int = 10             # embedding size per character
    n_hidden: int = 200          # units per hidden tanh layer
    n_layers: int = 1            # hidden tanh layers
    dropout: float = 0.0         # dropout after each hidden layer
    rdrop: float = 0.0           # R-Drop: run each minibatch twice (two dropout masks) and add this
                                 # times the symmetric KL between the two predictions to the loss
    norm: str = "none"           # normalisation before each tanh: none, batch or layer
    init: str = "glorot"         # dense weights: glorot, or normal (N(0, 1) as in the lecture)
    precision: str = "float32"   # float32, or mixed_bfloat16: float32 weights, bfloat16 products
    # optimisation
    batch_size: int = 32
    steps: int | None = 200_000  # optimizer steps (ignored when epochs is set; see minutes)
    epochs: int | None = None    # passes over the train split, instead of steps
    minutes: float | None = None # time budget for the whole run, evaluations and saving included:
                                 # its steps are planned on the machine (decay_at scaled from steps)
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

    def __post_init__(self):
        self.validate()  # a Config is checked once, where it is made: everything downstream trusts it

    def validate(self) -> "Config":
        """This configuration, if every value is in range; else :class:`ConfigError` naming the flag."""
        check_model_options(block_size=self.block_size, n_embd=self.n_embd, n_hidden=self.n_hidden,
                            n_layers=self.n_layers, dropout=self.dropout, rdrop=self.rdrop, norm=self.norm,
                            init=self.init, precision=self.precision)
        check_optimizer_options(self.optimizer, self.lr, self.weight_decay)
        check_positive_int(self.batch_size, "--batch-size")
        check_run_length(self.steps, self.epochs, self.minutes, self.decay_at)
        check_positive_number(self.decay_factor, "--decay-factor")
        if not isinstance(self.decay_at, list) or any(not _is_int(s) or s < 1 for s in self.decay_at):
            raise ConfigError(f"--decay-at takes positive step counts, got {self.decay_at!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be {_choices(SCHEDULES)}, got {self.schedule!r}")
        check_seed(self.seed, "--seed")
        check_seed(self.split_seed, "--split-seed")
        if not _is_int(self.steps_per_call) or self.steps_per_call < 0:
            raise ConfigError(f"--steps-per-call must be 0 (chosen for you) or a positive integer, "
                              f"got {self.steps_per_call!r}")
        if not _is_int(self.plateau_patience) or self.plateau_patience < 0:
            raise ConfigError(f"--plateau-patience must be 0 (off) or a positive integer, "
                              f"got {self.plateau_patience!r}")
        if self.plateau_patience and self.decay_factor >= 1:
            raise ConfigError(f"--plateau-patience cuts the rate by --decay-factor, which must then be "
                              f"below 1, got {self.decay_factor!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "configuration") -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes) -> "Config":
        return Config.from_dict({**self.to_dict(), **changes})


# Named starting points for `kmlp train --preset NAME`; flags given on the command line override them.
PRESETS: dict[str, dict] = {
    # The lecture's recipe, exactly: its model with its N(0, 1) initial weights, 200k SGD steps at
    # batch 32, rate 0.1 then 0.01 (its dev loss, and Glorot's initial weights', are in the README).
    "lecture": dict(block_size=3, n_embd=10, n_hidden=200, init="normal", batch_size=32, steps=200_000,
                    optimizer="sgd", lr=0.1, decay_at=[100_000], decay_factor=0.1),
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
    """
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a JSON file of options") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]  # a run's config.json holds the configuration under "config"
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of options")
    base = base or Config()
    return Config.from_dict({**base.to_dict(), **values}, source=str(path))
