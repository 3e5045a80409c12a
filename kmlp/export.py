"""Export: a trained run as a TensorFlow SavedModel that TensorFlow Serving (or any TensorFlow
program) can load without kmlp or a Python vocabulary.

    DIR/export/1/          saved_model.pb, variables/   (version folders 1, 2, ... as Serving expects)

Signatures (the vocabulary is a lookup table inside the graph)::

    serving_default       context: string [B] -> probabilities: float32 [B, V], tokens: string [V]
    generate              count: int32, seed: int64, temperature: float32 -> names: string [count]
    generate_with_prefix  the same plus prefix: string -> names that start with it
    score                 names: string [B] -> log_likelihood, per_char: float32 [B], tokens: int32 [B]

A context is the characters before the one to predict; only the last ``block_size`` count and
shorter ones are left-padded with the boundary ".", so "" asks for the first letter of a name.
Contexts or prefixes with characters outside the vocabulary fail the call (InvalidArgument);
names with such characters score -inf. ``tokens`` of serving_default lists the vocabulary in
index order, "." (the end of a name) first.

    >>> loaded = tf.saved_model.load("DIR/export/1")
    >>> loaded.signatures["generate"](count=tf.constant(3), seed=tf.constant(7, tf.int64),
    ...                               temperature=tf.constant(1.0))["names"]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from .sample import NameModel
from .runs import Run

EXPORT_DIR = "export"


class ExportError(ValueError):
    """The export cannot be written where asked; nothing was changed."""


class ServingModel(NameModel):
    """:class:`NameModel` plus the serving signatures, each a ``tf.function`` with a fixed signature."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="context")])
    def next_char(self, context):
        ids = self.encode(context, boundary_ok=True)
        tf.debugging.assert_non_negative(ids.flat_values,
                                         message="a context has characters outside the vocabulary")
        return {"probabilities": self.next_probs(self.context_ids(context)), "tokens": self.tokens}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="count"),
                                  tf.TensorSpec([], tf.int64, name="seed"),
                                  tf.TensorSpec([], tf.float32, name="temperature")])
    def generate_plain(self, count, seed, temperature):
        return {"names": self._generate(count, seed, temperature, tf.constant(""))}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="count"),
                                  tf.TensorSpec([], tf.int64, name="seed"),
                                  tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([], tf.string, name="prefix")])
    def generate_with_prefix(self, count, seed, temperature, prefix):
        return {"names": self._generate(count, seed, temperature, prefix)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="names")])
    def score_names(self, names):
        total, tokens = self.log_likelihood(names)
        return {"log_likelihood": total, "per_char": total / tf.cast(tokens, tf.float32), "tokens": tokens}

    def _generate(self, count, seed, temperature, prefix):
        tf.debugging.assert_positive(temperature, message="temperature must be positive")
        tf.debugging.assert_non_negative(count, message="count must not be negative")
        return self.generate_names(count, seed, temperature, tf.constant(0), prefix,
                                   tf.constant(self.max_len))

    def signatures(self) -> dict:
        return {"serving_default": self.next_char, "generate": self.generate_plain,
                "generate_with_prefix": self.generate_with_prefix, "score": self.score_names}


def next_version(export_root: Path) -> int:
    """One more than the highest numbered version folder under ``export_root`` (1 if none)."""
    versions = [int(p.name) for p in Path(export_root).iterdir() if p.is_dir() and p.name.isdigit()] \
        if Path(export_root).is_dir() else []
    return max(versions, default=0) + 1


def export_run(run: Run, version: int | None = None, export_root: str | os.PathLike | None = None) -> Path:
    """Write ``run`` as a SavedModel to ``export_root/<version>`` (default ``run.path/export``, next version).

    The SavedModel is written to a hidden folder beside the target and renamed into place, so a
    server watching ``export_root`` never sees a half-written version. An existing version is never
    replaced (:class:`ExportError`).
    """
    export_root = Path(export_root) if export_root else Path(run.path) / EXPORT_DIR
    if version is None:
        version = next_version(export_root)
    if version < 1:
        raise ExportError(f"--version must be a positive integer, got {version}")
    target = export_root / str(version)
    if target.exists():
        raise ExportError(f"{target}: version {version} already exists; choose another --version "
                          f"or leave it out for the next one ({next_version(export_root)})")
    export_root.mkdir(parents=True, exist_ok=True)
    module = ServingModel(run.model, run.vocab)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=export_root))
    try:
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from a server running as another user
        os.rename(staging, target)  # fails, rather than overwrites, if the version appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
