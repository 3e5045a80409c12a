"""Export: a trained run as a TensorFlow SavedModel that TensorFlow Serving (or any TensorFlow
program) can load without kmlp or a Python vocabulary, or as a LiteRT model for phones.

    DIR/export/1/          saved_model.pb, variables/   (version folders 1, 2, ... as Serving expects)
    DIR/litert/1/          model.tflite, model.json     (``--format litert``; see kmlp.export.litert)

Signatures of the SavedModel (the vocabulary is a lookup table inside the graph)::

    serving_default       context: string [B] -> probabilities: float32 [B, V], tokens: string [V]
    generate              count: int32, seed: int64, temperature: float32 -> names: string [count]
    generate_with_prefix  the same plus prefix: string -> names that start with it
    generate_with_options the same plus top_k: int32, top_p: float32, min_len, max_len: int32
    score                 names: string [B] -> log_likelihood, per_char: float32 [B], tokens: int32 [B]

A context is the characters before the one to predict; only the last ``block_size`` count and
shorter ones are left-padded with the boundary ".", so "" asks for the first letter of a name.
``tokens`` of serving_default lists the vocabulary in index order, "." (the end of a name) first.
Names with characters outside the vocabulary score -inf.

Every call is bounded: at most :data:`MAX_REQUEST` names or contexts per call, each at most
:data:`~kmlp.generation.drawing.MAX_NAME_LENGTH` characters. A call outside the limits, or with a bad value
(a negative count, a seed outside the command line's range, a temperature that is not a positive
finite number, a prefix or context with characters outside the vocabulary), fails with
InvalidArgument and a one-line message such as ``count must be from 0 to 10000, got -1``.

    >>> loaded = tf.saved_model.load("DIR/export/1")
    >>> loaded.signatures["generate"](count=tf.constant(3), seed=tf.constant(7, tf.int64),
    ...                               temperature=tf.constant(1.0))["names"]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from kmlp.config import MAX_SEED, MAX_VERSION, check_version
from kmlp.data.files import MAX_NAME_LENGTH
from kmlp.errors import ConfigError, ExportError
from kmlp.generation.drawing import MAX_LEN
from kmlp.generation.sample import NameModel
from kmlp.runs import lock, manifest
from kmlp.runs.rundir import EXPORT_DIR, LITERT_DIR, Run
from kmlp.utils import atomic

LITERT_MODEL = "model.tflite"
FORMATS = ("saved_model", "litert")
MAX_REQUEST = 10_000  # names (generate's count, score's batch) or contexts per SavedModel call


def _require(condition, template: str, *values):
    """``(condition, message)``: a check for :func:`_checked`."""
    return condition, template, values


def _checked(checks):
    """One op that passes when every check holds, and otherwise fails with the first failing
    check's message (one short line); messages are formatted only then."""
    def fail():
        asserts = [tf.debugging.Assert(ok, [tf.strings.format(template, values)])
                   for ok, template, values in checks]
        with tf.control_dependencies(asserts):
            return tf.constant(False)

    return tf.cond(tf.reduce_all(tf.stack([ok for ok, _, _ in checks])), lambda: tf.constant(True), fail)


def _within(value, low, high):
    return tf.logical_and(value >= low, value <= high)


class ServingModel(NameModel):
    """:class:`NameModel` plus the serving signatures, each a ``tf.function`` with a fixed signature.

    Each checks its inputs before any work, so that a request beyond the limits is refused rather
    than run out of memory. Requests are small (at most MAX_REQUEST names), so the draws of all
    steps are hashed up front, which makes each step, and a one-name call, shorter.
    """

    draws_up_front = True

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="context")])
    def next_char(self, context):
        ids = self.encode(context, boundary_ok=True)
        checks = self._batch_checks(context, "contexts") + [
            _require(tf.reduce_all(ids.flat_values >= 0),
                     "a context has characters outside the vocabulary")]
        with tf.control_dependencies([_checked(checks)]):
            return {"probabilities": self.next_probs(self.context_ids(context)), "tokens": self.tokens}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([], tf.int32, name="count"),
                                  tf.TensorSpec([], tf.int64, name="seed"),
                                  tf.TensorSpec([], tf.float32, name="temperature")])
    def generate_plain(self, count, seed, temperature):
        return self._generate(count, seed, temperature, tf.constant(""))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([], tf.int32, name="count"),
                                  tf.TensorSpec([], tf.int64, name="seed"),
                                  tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([], tf.string, name="prefix")])
    def generate_with_prefix(self, count, seed, temperature, prefix):
        return self._generate(count, seed, temperature, prefix)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([], tf.int32, name="count"),
                                  tf.TensorSpec([], tf.int64, name="seed"),
                                  tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([], tf.int32, name="top_k"),
                                  tf.TensorSpec([], tf.float32, name="top_p"),
                                  tf.TensorSpec([], tf.string, name="prefix"),
                                  tf.TensorSpec([], tf.int32, name="min_len"),
                                  tf.TensorSpec([], tf.int32, name="max_len")])
    def generate_with_options(self, count, seed, temperature, top_k, top_p, prefix, min_len, max_len):
        return self._generate(count, seed, temperature, prefix, top_k, top_p, min_len, max_len)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="names")])
    def score_names(self, names):
        with tf.control_dependencies([_checked(self._batch_checks(names, "names"))]):
            total, tokens = self.log_likelihood(names)
        return {"log_likelihood": total, "per_char": total / tf.cast(tokens, tf.float32), "tokens": tokens}

    def _batch_checks(self, strings, what: str) -> list:
        longest = tf.reduce_max(tf.concat([tf.strings.length(strings, unit="UTF8_CHAR"), [0]], 0))
        return [_require(tf.size(strings) <= MAX_REQUEST,
                         f"at most {MAX_REQUEST} {what} per call, got {{}}", tf.size(strings)),
                _require(longest <= MAX_NAME_LENGTH,
                         f"{what} must be at most {MAX_NAME_LENGTH} characters long, got one of {{}}",
                         longest)]

    def _generate(self, count, seed, temperature, prefix, top_k=0, top_p=1.0, min_len=0, max_len=None):
        """Checked names; options left as Python values (the shorter signatures) stay out of the graph."""
        max_len = self.max_len if max_len is None else max_len
        prefix_len = tf.strings.length(prefix, unit="UTF8_CHAR")
        checks = [
            _require(_within(count, 0, MAX_REQUEST), f"count must be from 0 to {MAX_REQUEST}, got {{}}",
                     count),
            _require(_within(seed, 0, MAX_SEED), f"seed must be from 0 to {MAX_SEED}, got {{}}", seed),
            _require(tf.logical_and(tf.bitcast(temperature, tf.int32) > 0,  # > 0, subnormals too
                                    temperature <= temperature.dtype.max),
                     "temperature must be a positive finite number, got {}", temperature),
            _require(prefix_len < max_len, "prefix must be shorter than max_len ({}), got {} characters",
                     max_len, prefix_len),
            _require(tf.reduce_all(self.encode(prefix[None]).flat_values >= 0),
                     "the prefix has characters outside the vocabulary"),
        ]
        if tf.is_tensor(top_k):
            checks += [
                _require(top_k >= 0, "top_k must be 0 (all characters) or more, got {}", top_k),
                _require(tf.logical_and(top_p > 0, top_p <= 1), "top_p must be in (0, 1], got {}", top_p),
                _require(_within(max_len, 1, MAX_NAME_LENGTH),
                         f"max_len must be from 1 to {MAX_NAME_LENGTH}, got {{}}", max_len),
                _require(_within(min_len, 0, max_len), "min_len must be from 0 to max_len ({}), got {}",
                         max_len, min_len),
            ]
        with tf.control_dependencies([_checked(checks)]):
            names = self.generate_names(tf.identity(count), seed, tf.constant(0, tf.int64), temperature,
                                        top_k, top_p, prefix, min_len, max_len)
        return {"names": names}

    def signatures(self) -> dict:
        return {"serving_default": self.next_char, "generate": self.generate_plain,
                "generate_with_prefix": self.generate_with_prefix,
                "generate_with_options": self.generate_with_options, "score": self.score_names}


def next_version(export_root: Path) -> int:
    """One more than the highest numbered version folder under ``export_root`` (1 if none). As in
    TensorFlow Serving, a version folder's name is ASCII digits for an int64; other folders are not
    versions."""
    root = Path(export_root)
    names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    versions = [int(n) for n in names if n.isascii() and n.isdigit() and int(n) <= MAX_VERSION]
    return max(versions, default=0) + 1


def export_run(run: Run, version: int | None = None, export_root: str | os.PathLike | None = None,
               format: str = "saved_model") -> Path:
    """Write ``run`` to ``export_root/<version>`` (next version by default) and return that folder.

    ``format`` "saved_model" (default ``export_root`` ``run.path/export``) writes a SavedModel with
    the signatures of :class:`ServingModel`; "litert" (default ``run.path/litert``) writes
    ``model.tflite`` (context indices -> next-character logits) and ``model.json`` (vocabulary and
    what a program needs to draw names, see :mod:`kmlp.export.litert`). Everything is written to a hidden
    folder beside the target and renamed into place, so a watcher never sees a half-written
    version. An existing version is never replaced (:class:`ExportError`), and no other kmlp process
    writes the run meanwhile (:class:`kmlp.runs.lock.RunLock`).
    """
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if version is not None:
        check_version(version)
    with lock.RunLock(run.path):
        return _export(run, version, export_root, format)


def _export(run: Run, version: int | None, export_root, format: str) -> Path:
    default_root = EXPORT_DIR if format == "saved_model" else LITERT_DIR
    export_root = Path(export_root) if export_root else Path(run.path) / default_root
    if version is None:
        version = next_version(export_root)
        if version > MAX_VERSION:
            raise ExportError(f"{export_root}: version {MAX_VERSION} exists, the highest there can be; "
                              f"choose a free --version")
    target = export_root / str(version)
    if target.exists():
        raise ExportError(f"{target}: version {version} already exists; choose another --version "
                          f"or leave it out for the next one ({next_version(export_root)})")
    export_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=export_root))
    try:
        if format == "saved_model":
            module = ServingModel(run.model, run.vocab)
            tf.saved_model.save(module, str(staging), signatures=module.signatures())
        else:
            _write_litert(run, staging)
        os.chmod(staging, atomic.new_dir_mode())  # mkdtemp's 0700 would hide it from other users
        _record_in_run(run.path, staging, target)
        os.rename(staging, target)  # fails, rather than overwrites, if the version appeared meanwhile
    except tf.errors.OpError as e:  # TensorFlow's own writes (a full disk) fail with these, not OSError
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"{target}: not exported ({e.message})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _record_in_run(run_dir: Path, staging: Path, target: Path) -> None:
    """List a version exported into the run's own folder in its manifest before it appears there, so
    that training the run again knows it for kmlp's and keeps it."""
    run_dir = Path(os.path.abspath(run_dir))
    target = Path(os.path.abspath(target))
    if run_dir in target.parents:
        manifest.add(run_dir, manifest.entries_of(staging, target.relative_to(run_dir).as_posix()))


def _write_litert(run: Run, folder: Path) -> None:
    """``model.tflite`` from Keras's own LiteRT export, and the JSON that describes it beside it."""
    from kmlp.export.litert import describe

    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints "Saved artifact at ..."
        run.model.export(str(folder / LITERT_MODEL), format="litert", verbose=False)
    info = describe(run.vocab.chars, int(run.model.input_shape[-1]), MAX_LEN)
    (folder / LITERT_MODEL).with_suffix(".json").write_text(
        json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
