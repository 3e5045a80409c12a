"""Training that starts from a trained run: ``kmlp train --from RUN``, ``"start_from"`` in a
``--config`` file, :func:`start_from` in Python.

- The configuration (before TensorFlow loads, :func:`start_values`): the run's architecture
  (:data:`ARCHITECTURE`), which an option given explicitly may not contradict; the run's initial
  weights' kind, dropout, R-Drop and precision unless given; and, unless given, fine-tuning's
  rate and length (:data:`FINE_TUNING`), evaluated once a pass (:func:`pass_calls`). A preset's
  values never count as given.
- The data (:func:`extend_data`): the run's vocabulary, followed by the new list's own new characters.
- The model (:func:`start_model`): the run's weights, with the vocabulary grown as
  :mod:`kmlp.models.extend` says; the run is recorded by its path and the hash of its weights.

RUN is only ever read: no file in it is written, and a training may not write into it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kmlp.config import FLAGS, PRESETS, Config, Naming
from kmlp.data.pipeline import NamesData
from kmlp.data.splits import stream_dtype
from kmlp.data.vocab import Vocabulary
from kmlp.errors import ConfigError, RunError
from kmlp.runs.rundir import load_run, read_run_config

ARCHITECTURE = ("arch", "block_size", "fuse", "n_embd", "n_hidden", "n_layers", "norm")  # the weights' shapes
CARRIED = ("init", "norm_momentum", "norm_epsilon", "dropout", "rdrop", "precision")  # the run's, unless given
# Fine-tuning's rate and length, where the user names none (measured in docs/fine-tuning.md). The
# length is in passes over the list's train split, so it grows with the list, and every pass is
# evaluated on dev for early stopping to choose from. The rate is lr_passes over the passes the run
# makes: a run of fewer passes, such as a time budget gives a long list, takes larger steps to go
# as far, while a higher rate for the same passes ends no better.
FINE_TUNING = {"lr_passes": 0.03, "epochs": 200}
LENGTH_OPTIONS = {"steps", "epochs", "minutes"}


def start_values(values: dict, explicit=frozenset(), naming: Naming = FLAGS) -> dict:
    """``values`` (a configuration's options, ``start_from`` among them) made to start from that run:
    its architecture, refused in one line if an ``explicit`` option contradicts it, and its carried
    options and fine-tuning's defaults where not ``explicit``. No TensorFlow."""
    run = values.get("start_from")
    if not isinstance(run, str) or not run:
        return values  # (refused by the configuration's own check, which names the option)
    run_config = read_run_config(run)[0]
    _check_contradictions(values, run_config, explicit, naming)
    changes = {key: getattr(run_config, key) for key in (*ARCHITECTURE, *CARRIED) if key not in explicit}
    if "dropout" in explicit and not values["dropout"] and "rdrop" not in explicit:
        changes["rdrop"] = 0.0  # (R-Drop needs dropout: no dropout, no R-Drop)
    if not {"lr", "lr_passes"} & set(explicit):  # (lr: its value for the default length, until planned)
        changes.update(lr_passes=FINE_TUNING["lr_passes"], lr=FINE_TUNING["lr_passes"] / FINE_TUNING["epochs"])
    if not LENGTH_OPTIONS & set(explicit):
        changes.update(epochs=FINE_TUNING["epochs"], steps=None, minutes=None)
    return {**values, **changes}


MIN_PASS_CALL = 10  # steps in a call at least: a call, an evaluation and a backup for every step or two
                    # would outweigh the training


def pass_calls(config: Config, steps_per_pass: int, max_call: int) -> Config:
    """A fine-tuning whose length is in passes or minutes, its steps per call not given: calls of a
    pass over the train split, or of the largest divisor of one from :data:`MIN_PASS_CALL` to
    ``max_call`` steps, so that dev is evaluated once a pass; without such a divisor, calls of
    :data:`MIN_PASS_CALL` (a short pass) or ``max_call`` steps (a long one)."""
    if not config.start_from or config.steps_per_call or not (config.epochs or config.minutes):
        return config
    divisors = [d for d in range(MIN_PASS_CALL, max_call + 1) if steps_per_pass % d == 0]
    return config.replace(steps_per_call=max(divisors) if divisors else
                          min(max(steps_per_pass, MIN_PASS_CALL), max_call))


def _check_contradictions(values: dict, run_config: Config, explicit, naming: Naming = FLAGS) -> None:
    """Refuse an ``explicit`` option of ``values`` that contradicts the run's architecture, naming both."""
    for key in ARCHITECTURE:
        ours, theirs = values[key], getattr(run_config, key)
        if key in explicit and ours != theirs:
            flag = "--" + key.replace("_", "-")
            raise naming.error(f"{naming.option(flag)} {naming.value(ours, flag)} contradicts "
                               f"{naming.option('--from')} {values['start_from']}'s {key} {theirs}", flag)


def start_from(run_dir: str | os.PathLike, preset: str = "default", **options) -> Config:
    """The configuration of ``kmlp train --from RUN_DIR --preset PRESET`` with ``options`` as flags:
    ``train(start_from("saved_models/names-mlp", lr=3e-4), data_path="my.txt")``."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    values = {**Config.from_dict(PRESETS[preset]).to_dict(), **options, "start_from": os.fspath(run_dir)}
    return Config.from_dict(start_values(values, explicit=set(options)))


def check_out_dir(out_dir: str | os.PathLike, start_from: str) -> None:
    """Refuse an output folder that is the run training starts from, or inside it."""
    out, run = Path(out_dir).resolve(), Path(start_from).resolve()
    if out == run or run in out.parents:
        raise ConfigError(f"--out {out_dir} is {'inside ' * (out != run)}the run --from {start_from} "
                          f"starts from, which is only ever read; give another --out")


def check_architecture(config: Config) -> Vocabulary:
    """The vocabulary of the run ``config`` starts from, if ``config`` has its architecture (a
    configuration made other than by :func:`start_values` may not); else :class:`ConfigError`."""
    run_config, run_vocab, _ = read_run_config(config.start_from)
    _check_contradictions(config.to_dict(), run_config, explicit=ARCHITECTURE)
    return run_vocab


def extended_vocab(run_vocab: Vocabulary, data_vocab: Vocabulary) -> Vocabulary:
    """The run's characters, in its order, then the list's characters it lacks, sorted."""
    return Vocabulary(run_vocab.chars + sorted(set(data_vocab.chars) - set(run_vocab.chars)))


def extend_data(data: NamesData, run_vocab: Vocabulary) -> NamesData:
    """``data`` in the run's vocabulary extended by its new characters (see :func:`extended_vocab`):
    the same names, each token renumbered."""
    vocab = extended_vocab(run_vocab, data.vocab)
    if vocab == data.vocab:
        return data
    renumber = np.array([0, *(vocab.stoi[c] for c in data.vocab.chars)], dtype=stream_dtype(len(vocab)))
    streams = {split: renumber[stream] for split, stream in data.streams.items()}
    return NamesData(vocab=vocab, block_size=data.block_size, streams=streams, path=data.path,
                     split_seed=data.split_seed)


CONTEXTS = 4096  # the train examples a new character's starting share is set on


def start_model(model, config: Config, data: NamesData) -> dict:
    """Put the weights of the run ``config`` starts from into ``model`` (built for ``data``, whose
    vocabulary extends the run's); returns the record of where it started, for config.json."""
    from kmlp.models.extend import CannotExtend, copy_extended, weights_sha256

    run = load_run(config.start_from)  # safe mode: no code in the run runs
    if data.vocab.chars[:len(run.vocab.chars)] != run.vocab.chars:
        raise RunError(f"{run.path}: the data's vocabulary does not extend the run's (load the data "
                       f"with kmlp.runs.start.extend_data)")
    x, _ = next(iter(data.dataset("train", CONTEXTS, shuffle=False).take(1)))
    x = x.numpy()
    known = np.all(x < len(run.vocab), axis=1)  # contexts of the run's own characters
    try:
        copy_extended(run.model, model, x[known] if known.any() else x[:1] * 0, seed=config.seed)
    except CannotExtend as e:
        raise RunError(f"{run.path}: kmlp cannot extend its model: {e}") from None
    return {"run": str(run.path.resolve()), "weights_sha256": weights_sha256(run.model),
            "new_characters": "".join(data.vocab.chars[len(run.vocab.chars):])}
