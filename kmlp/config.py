"""Configuration: one small dataclass for a training run, and named presets of it."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the option."""


PRECISIONS = ("float32", "mixed_bfloat16")  # Keras dtype policies a model can be built with

MAX_SEED = 2**32 - 1  # what numpy's and Python's generators (seeded by keras.utils.set_random_seed) take


def check_seed(value, flag: str = "--seed") -> int:
    """``value`` if it is a valid seed (an integer from 0 to :data:`MAX_SEED`), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{flag} must be an integer from 0 to {MAX_SEED}, got {value!r}")
    return value


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
    steps: int | None = 200_000  # optimizer steps (ignored when epochs is set)
    epochs: int | None = None    # passes over the train split, instead of steps
    optimizer: str = "sgd"       # sgd, adam or adamw
    lr: float = 0.1
    weight_decay: float = 0.0
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

    def validate(self) -> "Config":
        positive = ("block_size", "n_embd", "n_hidden", "n_layers", "batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.epochs is None and (self.steps is None or self.steps < 1):
            raise ConfigError(f"--steps must be a positive integer, got {self.steps!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.rdrop, (int, float)) and math.isfinite(self.rdrop) and self.rdrop >= 0):
            raise ConfigError(f"--rdrop must be >= 0, got {self.rdrop!r}")
        if self.rdrop and not self.dropout:
            raise ConfigError("--rdrop needs --dropout above 0 (without dropout its two passes agree); "
                              "add --rdrop 0 to train without either")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.decay_factor) and self.decay_factor > 0):
            raise ConfigError(f"--decay-factor must be a positive number, got {self.decay_factor!r}")
        if any((not isinstance(s, int)) or s < 1 for s in self.decay_at):
            raise ConfigError(f"--decay-at takes positive step counts, got {self.decay_at!r}")
        if self.norm not in ("none", "batch", "layer"):
            raise ConfigError(f"--norm must be none, batch or layer, got {self.norm!r}")
        if self.init not in ("glorot", "normal"):
            raise ConfigError(f"--init must be glorot or normal, got {self.init!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be {' or '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ConfigError(f"--optimizer must be sgd, adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("step", "cosine"):
            raise ConfigError(f"--schedule must be step or cosine, got {self.schedule!r}")
        if self.steps_per_call < 0:
            raise ConfigError(f"--steps-per-call must be >= 0, got {self.steps_per_call!r}")
        if not isinstance(self.plateau_patience, int) or self.plateau_patience < 0:
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
        if "split_seed" not in values and "seed" in values:
            # Files written before split_seed existed split the names with their seed.
            values = {**values, "split_seed": values["seed"]}
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


def load_config_file(path: str | Path) -> Config:
    """A configuration from a JSON file (as written by ``kmlp tune`` or found in a run's config.json)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]  # a run's config.json holds the configuration under "config"
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of options")
    return Config.from_dict(values, source=str(path))
