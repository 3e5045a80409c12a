"""Keras's TensorBoard callback, counting optimizer steps, with the character embeddings in the projector.

They count optimizer steps with ``optimizer.iterations`` rather than Keras "batches", so they stay
right when one batch runs several optimizer steps (a :class:`~kmlp.models.mlp.CharMLP` chunk of K
minibatches).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from kmlp.training.callbacks.loss_curve import BatchMeans
from kmlp.training.callbacks.state import rate_of, step_of
from kmlp.utils.atomic import atomic_open


class TensorBoard(keras.callbacks.TensorBoard):
    """``keras.callbacks.TensorBoard`` with every point at its optimizer step, and embeddings that
    TensorBoard's projector can open.

    >>> board = TensorBoard("logs", update_freq="batch", embeddings_freq=1,
    ...                     embeddings_metadata=[".", "a", "b", ...])
    >>> model.fit(train, steps_per_epoch=100, epochs=10, validation_data=dev, callbacks=[board])
    $ tensorboard --logdir logs

    It writes what Keras's callback writes, in the same places (``logs/train``, ``logs/validation``)
    and under the same tags, where Keras 3's falls short:

    - **Steps.** Keras counts batches, and epochs for the epoch points; when one batch runs K
      optimizer steps (a :class:`~kmlp.models.mlp.CharMLP` chunk) neither is the step. Here every point is
      at ``optimizer.iterations``, so runs of different epoch lengths or chunk sizes share one axis,
      and a resumed ``fit`` goes on from the step it resumes at. With ``update_freq`` "batch" (or
      N: every N batches; Keras's default, "epoch", writes none) come ``batch_loss``, the batch's own
      mean loss (Keras writes the epoch's running mean), and ``batch_learning_rate``, the rate it
      ran at. After each epoch come ``epoch_loss`` (in ``train`` and, with validation data,
      ``validation``) and ``epoch_learning_rate``: the rate the last batch ran at (a
      ``ReduceLROnPlateau`` cut made at the epoch's end shows from the next batch on). Put it after
      the callbacks that set the rate.
    - **Embeddings.** Keras 3 saves them as ``.weights.h5``, which the projector cannot read, with
      its configuration outside the ``train`` folder, where ``tensorboard --logdir`` of a parent
      folder does not look. Here each ``Embedding`` layer's table is written every
      ``embeddings_freq`` epochs and when training ends to ``train/<layer name>.tsv``, the
      projector's own format for a table without a checkpoint (far cheaper to write than a first
      checkpoint for a table of characters; not meant for tables of millions of values), with
      ``projector_config.pbtxt`` beside it once there is a table to show.
      ``embeddings_metadata`` is as in Keras (a labels file, or a dict of layer name to file,
      relative to ``train``) or a list with one label per row, written to ``train/metadata.tsv``.
    - **Flushing.** The event files are flushed after every epoch, so TensorBoard shows a live run
      up to its last epoch, and a process killed after an epoch has lost none of it.
    """

    LABELS_FILE = "metadata.tsv"

    def __init__(self, log_dir="logs", *args, update_freq="epoch", **kwargs):
        if update_freq != "epoch" and update_freq != "batch" and not (
                isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq > 0):
            raise ValueError(f"update_freq must be 'batch', 'epoch' or a positive integer, "
                             f"got {update_freq!r}")
        super().__init__(str(log_dir), *args, update_freq="epoch", **kwargs)  # batch points are written here
        self.batch_freq = 0 if update_freq == "epoch" else 1 if update_freq == "batch" else update_freq
        self._batches = BatchMeans()

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._batch_count, self._rate = 0, None
        self._batch_points = []  # (step, {tag: value}) of the batches since the last epoch's end
        self._embeddings_step = None

    def on_train_end(self, logs=None):
        self.write_scalars(self._train_writer, self._batch_points)  # of an epoch cut short, if any
        step = step_of(self.model.optimizer)
        if self.embeddings_freq and self._embeddings_step != step:  # the table as training left it
            self._log_embeddings(step)
        super().on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._batches.start(step_of(self.model.optimizer))

    def on_train_batch_begin(self, batch, logs=None):
        if self._should_trace:  # Keras's profiling; its batch points are off, and cost a summary op each
            super().on_train_batch_begin(batch, logs)
        self._rate = rate_of(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        if self._should_trace:
            super().on_train_batch_end(batch, logs)
        step = step_of(self.model.optimizer)
        means = self._batches.add(step, logs)
        self._batch_count += 1
        if means and self.batch_freq and not self._batch_count % self.batch_freq:
            points = {**means, "learning_rate": self._rate}
            self._batch_points.append((step, {f"batch_{name}": v for name, v in points.items()}))

    def on_epoch_end(self, epoch, logs=None):
        step = step_of(self.model.optimizer)
        self.write_scalars(self._train_writer, self._batch_points)
        self._batch_points = []
        # "lr" is the rate kmlp's schedules add for history.csv; TensorBoard gets it as learning_rate.
        logs = {name: value for name, value in (logs or {}).items() if name != "lr"}
        train = {f"epoch_{name}": v for name, v in logs.items() if not name.startswith("val_")}
        train["epoch_learning_rate"] = rate_of(self.model.optimizer) if self._rate is None else self._rate
        if self.write_steps_per_second:
            train["epoch_steps_per_second"] = self._compute_steps_per_second()
        self.write_scalars(self._train_writer, [(step, train)])
        validation = {f"epoch_{name[4:]}": v for name, v in logs.items() if name.startswith("val_")}
        if validation:
            self.write_scalars(self._val_writer, [(step, validation)])
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(step)
        if self.embeddings_freq and epoch % self.embeddings_freq == 0:
            self._log_embeddings(step)
        for writer in self._writers.values():
            writer.flush()

    @staticmethod
    def write_scalars(writer, points) -> None:
        """Write ``[(step, {tag: value}), ...]`` with ``writer`` (a ``tf.summary`` writer), one
        summary op per step where ``tf.summary.scalar`` runs several eager ops per value: this
        callback's largest cost, next to a small model's compiled call. (Batch points wait for the
        epoch's end, so that the writer is entered once for all of them.)"""
        import tensorflow as tf
        from tensorboard.plugins.scalar.summary import scalar_pb

        if not points:
            return
        with writer.as_default():
            for step, scalars in points:
                summary = scalar_pb(*next(iter(scalars.items())))
                for tag, value in list(scalars.items())[1:]:
                    summary.value.extend(scalar_pb(tag, value).value)
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)

    def _embedding_layers(self) -> list:
        return [layer for layer in self.model.layers if isinstance(layer, keras.layers.Embedding)]

    def _configure_embeddings(self):
        from tensorboard.plugins import projector

        metadata = self.embeddings_metadata
        if isinstance(metadata, (list, tuple)):
            for layer in self._embedding_layers():
                if len(metadata) != layer.input_dim:
                    raise ValueError(f"embeddings_metadata has {len(metadata)} labels, layer "
                                     f"{layer.name!r} has {layer.input_dim} rows")
                if any(set(str(label)) & set("\t\n\r") for label in metadata):
                    raise ValueError("embeddings_metadata labels may not hold tabs or line breaks")
            with atomic_open(os.path.join(self._train_dir, self.LABELS_FILE)) as f:
                f.write("".join(f"{label}\n" for label in metadata))
            metadata = self.LABELS_FILE
        self._projector = projector.ProjectorConfig()
        for layer in self._embedding_layers():
            embedding = self._projector.embeddings.add()
            embedding.tensor_name, embedding.tensor_path = layer.name, f"{layer.name}.tsv"
            if isinstance(metadata, str):
                embedding.metadata_path = metadata
            elif isinstance(metadata, dict) and layer.name in metadata:
                embedding.metadata_path = metadata[layer.name]

    def log_embeddings(self) -> None:
        """Write the projector's table of the model as it is now: after training, once a later
        callback (early stopping) has put other weights back."""
        if self.embeddings_freq:
            self._log_embeddings(step_of(self.model.optimizer))

    def _log_embeddings(self, step):
        from google.protobuf import text_format
        from tensorboard.plugins.projector.metadata import PROJECTOR_FILENAME

        for layer in self._embedding_layers():  # each file written whole: TensorBoard may be reading it
            with atomic_open(os.path.join(self._train_dir, f"{layer.name}.tsv")) as f:
                np.savetxt(f, keras.ops.convert_to_numpy(layer.embeddings), fmt="%.9g", delimiter="\t")
        with atomic_open(os.path.join(self._train_dir, PROJECTOR_FILENAME)) as f:
            f.write(text_format.MessageToString(self._projector))  # what projector.visualize_embeddings writes
        self._embeddings_step = step
