"""TensorBoard logs of a training run, a search and a range test, and keeping them whole on resume.

    DIR/logs/train/         batch_loss, batch_learning_rate (every compiled call of K steps),
                            epoch_loss, epoch_learning_rate (every evaluation), config (text);
                            the projector's embedding.tsv (the table), metadata.tsv (one label per
                            character, the boundary as ".") and projector_config.pbtxt
    DIR/logs/validation/    epoch_loss (dev), evaluation_loss_vs_iterations

Every point is at its optimizer step (see :class:`kmlp.training.callbacks.tensorboard.TensorBoard`), so ``tensorboard
--logdir saved_models`` lays runs side by side on one axis. While ``kmlp train`` runs, the logs are
written in its backup folder (``saved_models/.NAME.backup/logs``, see :mod:`kmlp.training.backup`), which
``tensorboard --logdir saved_models`` shows as it grows; they are linked into the run when it is
saved, and a resumed run first drops what the interrupted one wrote after the epoch it resumes from
(:func:`trim`). ``kmlp tune`` writes one folder per trial (``tuning/logs/TRIAL/execution0``, with
KerasTuner's hyperparameters for TensorBoard's HParams tab) and ``kmlp lr-find`` the range test's
curve (``logs/``: ``range_test/loss``, ``range_test/smoothed_loss``, ``range_test/learning_rate``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from kmlp.runs import rundir
from kmlp.training.callbacks.tensorboard import TensorBoard
from kmlp.utils import atomic

TRAIN, VALIDATION = "train", "validation"  # the runs Keras's TensorBoard callback writes


def tensorboard(log_dir, vocab, epochs: int) -> TensorBoard:
    """The callback that writes a kmlp training of ``epochs`` epochs into ``log_dir``: losses and
    rates at every optimizer step ``fit`` reports, and the character embeddings labelled by their
    characters, saved after the first epoch, every quarter of the run and at its end."""
    return TensorBoard(str(log_dir), update_freq="batch", write_graph=False,
                       embeddings_freq=max(1, epochs // 4),
                       embeddings_metadata=[vocab.token(i) for i in range(len(vocab))])


def watch_hint(live, out_dir) -> str:
    """Where a training's logs are and the command that shows them, live and once saved."""
    def shown(path):
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else str(path)

    return (f"TensorBoard logs in {shown(live)} while training, then in "
            f"{shown(Path(out_dir) / rundir.LOGS_DIR)}; watch with: tensorboard --logdir "
            f"{shown(Path(out_dir).parent)}")


def write_config(log_dir, info: dict) -> None:
    """The configuration, ``info``, as a table in TensorBoard's Text tab (tag ``config``, step 0)."""

    def write(writer):
        with writer.as_default():
            _config_text(info)

    _write(log_dir, write)


def _config_text(info: dict) -> None:
    """Write ``info`` as a table (tag ``config``, step 0) with the default writer."""
    rows = ["| option | value |", "|---|---|"]
    for name, value in info.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        rows.append(f"| {name} | {shown.replace('|', chr(92) + '|')} |")
    tf.summary.text("config", "\n".join(rows), step=0)


def write_scalars(log_dir, step: int, **values: float) -> None:
    """Scalars at one step, e.g. the dev loss a tune trial measures once it has trained."""
    _write(log_dir, lambda writer: TensorBoard.write_scalars(writer, [(step, values)]))


def write_range_test(log_dir, result, info: dict) -> None:
    """The learning-rate range test (:class:`kmlp.training.lr_find.LRFindResult`): raw and smoothed loss and
    the rate at each of its steps, the suggestion and the configuration as text."""

    def write(writer):
        _write_series(writer, {"range_test/loss": result.losses, "range_test/smoothed_loss": result.smoothed,
                               "range_test/learning_rate": result.rates})
        with writer.as_default():
            tf.summary.text("range_test/suggestion", f"suggested lr {result.suggested_lr:.3g}: half the rate "
                            f"at the floor of the loss curve ({result.floor_lr:.3g}, loss "
                            f"{result.floor_loss:.3f})", step=len(result.rates) - 1)
            _config_text(info)

    _write(log_dir, write)


def _write_series(writer, series: dict) -> None:
    """``{tag: [value at step 0, at step 1, ...]}`` in one graph call: for the range test's
    thousand steps, an eager summary op per point would cost several times as much, tracing
    included."""
    from tensorboard.plugins.scalar import metadata

    tags = list(series)
    scalar = metadata.create_summary_metadata(display_name=None, description=None)  # as tf.summary.scalar's

    @tf.function
    def write(values):
        with writer.as_default():
            for step in tf.range(tf.shape(values)[0], dtype=tf.int64):
                for column, tag in enumerate(tags):  # (tf.summary.scalar would prefix the loop's name scope)
                    tf.summary.write(tag, values[step, column], step=step, metadata=scalar)

    write(tf.constant(np.array([series[tag] for tag in tags], np.float32).T))


def _write(log_dir, write) -> None:
    """``write(writer)`` with a new writer of ``log_dir``, closed after it."""
    writer = tf.summary.create_file_writer(str(log_dir))
    try:
        write(writer)
    finally:
        writer.close()


def trim(log_dir, step: int) -> None:
    """Drop from every event file under ``log_dir`` the events after ``step``, and a last record cut
    short: what a killed training wrote after the epoch it is resumed from, which would otherwise
    show twice. Each file is rewritten whole or not at all."""
    for path in sorted(Path(log_dir).rglob("*tfevents*")):
        kept, dropped = [], False
        try:
            for record in tf.data.TFRecordDataset(str(path)):
                if event_pb2.Event.FromString(record.numpy()).step > step:
                    dropped = True
                else:
                    kept.append(record.numpy())
        except tf.errors.DataLossError:  # the kill cut the last record short
            dropped = True
        if dropped:
            partial = path.with_name(f".{os.getpid()}.trimmed")  # a name TensorBoard does not read
            with tf.io.TFRecordWriter(str(partial)) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(partial, path)


def copy(log_dir, into) -> None:
    """Put a training's logs into the run being saved (hard links where the file system allows)."""
    if Path(log_dir).is_dir():
        shutil.copytree(log_dir, into, copy_function=atomic.link_or_copy)
