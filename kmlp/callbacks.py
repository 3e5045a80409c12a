"""Keras callbacks for the learning rate: schedules counted in optimizer steps, a training-curve
recorder, Keras's TensorBoard callback counting optimizer steps, Leslie Smith's learning-rate range
test, a timer and a progress line.

All of them work with any compiled Keras model and any Keras optimizer whose learning rate is a
plain number (not a ``LearningRateSchedule``). They count optimizer steps with ``optimizer.iterations``
rather than Keras "batches", so they stay right when one batch runs several optimizer steps (a
:class:`~kmlp.model.CharMLP` chunk of K minibatches); the rate is then set once per chunk.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import statistics
import sys
import time

import keras
import numpy as np

from .config import check_positive_number, check_range_test
from .runs import atomic_open


def _rate_of(optimizer) -> float:
    """The optimizer's learning rate as a Python float (exactly its float32 value)."""
    return float(optimizer.learning_rate.numpy())  # (a third of keras.ops.convert_to_numpy's cost)


def _step_of(optimizer) -> int:
    return int(optimizer.iterations.numpy())


def _positive(name: str, value) -> float:
    return check_positive_number(value, name)


def training_state(model) -> tuple:
    """A copy of everything training changes: the model's variables (weights, normalisation
    statistics, dropout seeds) and the optimizer's (step count, learning rate, momentum or Adam
    moments). :func:`restore_training_state` puts it back exactly. Builds the optimizer's variables
    if it has none yet (as ``fit`` would), so that none appears after the copy."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return ([v.numpy() for v in model.variables], [v.numpy() for v in optimizer.variables],
            _rate_of(optimizer))


def restore_training_state(model, state: tuple) -> None:
    weights, optimizer_values, rate = state
    for variable, value in zip(model.variables, weights):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, optimizer_values):
        variable.assign(value)
    model.optimizer.learning_rate = rate  # also when it is not among the variables


class _RateSchedule(keras.callbacks.Callback):
    """Sets the rate to ``rate_at(step)`` before every batch and logs the rate in force as ``lr``.

    The rate is written only when it changes (the optimizer keeps it in float32, so comparing with
    the float32 value avoids a write per batch). A change made by another callback, such as
    ``keras.callbacks.ReduceLROnPlateau``, is kept: it scales the rest of the schedule.
    """

    def rate_at(self, step: int) -> float:
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self._scale = 1.0   # product of the cuts other callbacks made
        self._written = None

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        current = _rate_of(optimizer)
        if self._written and current != self._written:
            self._scale *= current / self._written
        rate = float(np.float32(self.rate_at(_step_of(optimizer)) * self._scale))
        if rate != current:
            optimizer.learning_rate = rate
        self._written = rate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = _rate_of(self.model.optimizer)


class StepDecay(_RateSchedule):
    """Multiply the learning rate by ``factor`` at each milestone, counted in optimizer steps.

    Example (the lecture's recipe: 0.1, then 0.01 from step 100,000):

    >>> model.fit(train, steps_per_epoch=1000, epochs=200,
    ...           callbacks=[StepDecay(0.1, milestones=[100_000], factor=0.1)])

    The rate at step ``s`` is ``initial_lr * factor ** (number of milestones <= s)``. With chunks of
    K optimizer steps per batch it is set at the start of each chunk, so put milestones on chunk
    boundaries (``kmlp.train.plan_training`` does).
    """

    def __init__(self, initial_lr: float, milestones=(), factor: float = 0.1):
        super().__init__()
        self.initial_lr = _positive("initial_lr", initial_lr)
        self.factor = _positive("factor", factor)
        milestones = list(milestones)
        if any(isinstance(m, bool) or int(m) != m or m < 1 for m in milestones):
            raise ValueError(f"milestones must be positive step counts, got {milestones!r}")
        self.milestones = sorted(int(m) for m in milestones)

    def rate_at(self, step: int) -> float:
        return self.initial_lr * self.factor ** bisect.bisect_right(self.milestones, step)


class CosineDecay(_RateSchedule):
    """Half a cosine wave from ``initial_lr`` down to ``alpha * initial_lr`` over ``decay_steps``
    optimizer steps, then constant (as ``keras.optimizers.schedules.CosineDecay``, but as a callback,
    so the rate stays a plain variable that other callbacks and the range test can set).

    >>> model.fit(train, steps_per_epoch=1000, epochs=20, callbacks=[CosineDecay(1e-2, 20_000)])

    With chunks of K optimizer steps per batch the rate is the schedule's value at the chunk's first
    step, held for the chunk: a staircase within ``initial_lr * pi / 2 * K / decay_steps`` of the curve.
    """

    def __init__(self, initial_lr: float, decay_steps: int, alpha: float = 0.0):
        super().__init__()
        self.initial_lr = _positive("initial_lr", initial_lr)
        if isinstance(decay_steps, bool) or int(decay_steps) != decay_steps or decay_steps < 1:
            raise ValueError(f"decay_steps must be a positive integer, got {decay_steps!r}")
        self.decay_steps = int(decay_steps)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def rate_at(self, step: int) -> float:
        progress = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.initial_lr * (self.alpha + (1.0 - self.alpha) * cosine)


class _BatchMeans:
    """Each batch's own mean of the values ``fit`` logs, recovered from the running means of the
    epoch that Keras reports after every batch, each batch weighted by its optimizer steps (exact up
    to float32 rounding, well under 0.01 for this model's losses).

    >>> means = _BatchMeans()
    >>> means.start(step)                  # at the start of each epoch
    >>> means.add(step, logs)              # after each batch: {"loss": that batch's mean, ...}
    """

    def start(self, step: int) -> None:
        self._start, self._count, self._means = step, 0, {}

    def add(self, step: int, logs) -> dict:
        """The batch that ended at optimizer ``step``: its mean of every value in ``logs`` (empty if
        it ran no step)."""
        count = step - self._start
        if not logs or count <= self._count:
            return {}
        means = {name: float(value) for name, value in logs.items()}
        batch = {name: (mean * count - self._means.get(name, 0.0) * self._count) / (count - self._count)
                 for name, mean in means.items()}
        self._means, self._count = means, count
        return batch


class LossCurve(keras.callbacks.Callback):
    """Records the training curve at the finest grain ``fit`` reports: one point per batch.

    After ``fit``, ``steps[i]`` is the optimizer step at the end of batch i, ``losses[i]`` the mean
    training loss over that batch's optimizer steps and ``rates[i]`` the learning rate it ran at.

    >>> curve = LossCurve()
    >>> model.fit(train, steps_per_epoch=1000, epochs=10, callbacks=[curve])
    >>> plots.plot_loss("loss.png", curve.steps, curve.losses)

    With ``path``, the points are also appended to that CSV file (``step,loss,lr``) at the end of
    every epoch, and the points already in it are read back when training begins, so that a run
    resumed after an interruption has its whole curve.

    Keras logs the running mean of the epoch so far; each batch's own mean is recovered from two
    successive running means (:class:`_BatchMeans`). Put it after the schedule callbacks, so that it
    reads the rate they set for the batch.
    """

    COLUMNS = ("step", "loss", "lr")

    def __init__(self, path=None):
        super().__init__()
        self.path = path
        self._batches = _BatchMeans()

    def on_train_begin(self, logs=None):
        self.steps, self.losses, self.rates = [], [], []
        if self.path and os.path.exists(self.path):
            with open(self.path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    self.steps.append(int(row["step"]))
                    self.losses.append(float(row["loss"]))
                    self.rates.append(float(row["lr"]))
        self._saved = len(self.steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._batches.start(_step_of(self.model.optimizer))

    def on_train_batch_begin(self, batch, logs=None):
        self._rate = _rate_of(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        step = _step_of(self.model.optimizer)
        means = self._batches.add(step, {"loss": logs["loss"]} if logs and "loss" in logs else None)
        if means:
            self.steps.append(step)
            self.losses.append(means["loss"])
            self.rates.append(self._rate)

    def on_epoch_end(self, epoch, logs=None):
        if not self.path:
            return
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:
                writer.writerow(self.COLUMNS)
            for i in range(self._saved, len(self.steps)):
                writer.writerow([self.steps[i], repr(self.losses[i]), repr(self.rates[i])])
        self._saved = len(self.steps)


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
      optimizer steps (a :class:`~kmlp.model.CharMLP` chunk) neither is the step. Here every point is
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
        self._batches = _BatchMeans()

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._batch_count, self._rate = 0, None
        self._batch_points = []  # (step, {tag: value}) of the batches since the last epoch's end
        self._embeddings_step = None

    def on_train_end(self, logs=None):
        self.write_scalars(self._train_writer, self._batch_points)  # of an epoch cut short, if any
        step = _step_of(self.model.optimizer)
        if self.embeddings_freq and self._embeddings_step != step:  # the table as training left it
            self._log_embeddings(step)
        super().on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._batches.start(_step_of(self.model.optimizer))

    def on_train_batch_begin(self, batch, logs=None):
        if self._should_trace:  # Keras's profiling; its batch points are off, and cost a summary op each
            super().on_train_batch_begin(batch, logs)
        self._rate = _rate_of(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        if self._should_trace:
            super().on_train_batch_end(batch, logs)
        step = _step_of(self.model.optimizer)
        means = self._batches.add(step, logs)
        self._batch_count += 1
        if means and self.batch_freq and not self._batch_count % self.batch_freq:
            points = {**means, "learning_rate": self._rate}
            self._batch_points.append((step, {f"batch_{name}": v for name, v in points.items()}))

    def on_epoch_end(self, epoch, logs=None):
        step = _step_of(self.model.optimizer)
        self.write_scalars(self._train_writer, self._batch_points)
        self._batch_points = []
        # "lr" is the rate kmlp's schedules add for history.csv; TensorBoard gets it as learning_rate.
        logs = {name: value for name, value in (logs or {}).items() if name != "lr"}
        train = {f"epoch_{name}": v for name, v in logs.items() if not name.startswith("val_")}
        train["epoch_learning_rate"] = _rate_of(self.model.optimizer) if self._rate is None else self._rate
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

    def _log_embeddings(self, step):
        from google.protobuf import text_format
        from tensorboard.plugins.projector.metadata import PROJECTOR_FILENAME

        for layer in self._embedding_layers():  # each file written whole: TensorBoard may be reading it
            with atomic_open(os.path.join(self._train_dir, f"{layer.name}.tsv")) as f:
                np.savetxt(f, keras.ops.convert_to_numpy(layer.embeddings), fmt="%.9g", delimiter="\t")
        with atomic_open(os.path.join(self._train_dir, PROJECTOR_FILENAME)) as f:
            f.write(text_format.MessageToString(self._projector))  # what projector.visualize_embeddings writes
        self._embeddings_step = step


class ElapsedTime(keras.callbacks.Callback):
    """Adds ``seconds``, the training time so far, to every epoch's logs, where ``History`` and
    ``CSVLogger`` record it.

    >>> model.fit(train, epochs=10, callbacks=[ElapsedTime(), keras.callbacks.CSVLogger("h.csv")])

    ``earlier`` is time spent before this ``fit`` (a resumed run's first part). Put it before the
    callbacks that read the logs.
    """

    def __init__(self, earlier: float = 0.0):
        super().__init__()
        self.earlier = float(earlier)

    def on_train_begin(self, logs=None):
        self._started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self._started

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = round(self.seconds, 3)


class LRFinder(keras.callbacks.Callback):
    """The learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural
    Networks", 2017; fastai's ``lr_find``): one minibatch at each of ``num_steps`` rates spaced
    exponentially from ``start_lr`` to ``end_lr``, recording the loss, then everything put back.

    >>> finder = LRFinder(1e-3, 1.0, num_steps=1000)
    >>> model.fit(train_minibatches, steps_per_epoch=1000, epochs=1, callbacks=[finder])
    >>> finder.rates, finder.losses, finder.smoothed   # see kmlp.lr_find for a suggested rate

    ``losses`` are the raw minibatch losses; ``smoothed`` their exponential moving average with
    factor ``beta``, bias-corrected as in Adam so the first points are not pulled towards 0. The test
    stops early once the loss diverges: NaN or infinite, or the smoothed loss above ``diverge_factor``
    times the lowest one so far. When training ends, the model's variables (weights, normalisation
    statistics, dropout seeds) and all the optimizer's variables (step count, learning rate,
    momentum or Adam moments) are restored exactly, so training goes on as if the test never ran.

    One point is one Keras batch: give it plain minibatches (for CharMLP, ``steps_per_call=1``).
    """

    def __init__(self, start_lr: float = 1e-3, end_lr: float = 1.0, num_steps: int = 1000,
                 beta: float = 0.98, diverge_factor: float = 4.0):
        super().__init__()
        check_range_test(start_lr, end_lr, num_steps)
        self.start_lr, self.end_lr = float(start_lr), float(end_lr)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.num_steps = int(num_steps)
        self.beta = float(beta)
        self.diverge_factor = _positive("diverge_factor", diverge_factor)
        self.schedule = np.geomspace(self.start_lr, self.end_lr, self.num_steps)

    def on_train_begin(self, logs=None):
        self._saved = training_state(self.model)
        self.rates, self.losses, self.smoothed = [], [], []
        self.diverged = False
        self._average, self._best = 0.0, math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self._mean, self._count = 0.0, 0

    def on_train_batch_begin(self, batch, logs=None):
        if len(self.rates) >= self.num_steps:
            self.model.stop_training = True
            return
        self.model.optimizer.learning_rate = self.schedule[len(self.rates)]

    def on_train_batch_end(self, batch, logs=None):
        if len(self.rates) >= self.num_steps:
            return
        mean, count = float(logs["loss"]), batch + 1  # logs hold the running mean of the epoch
        loss = mean * count - self._mean * self._count
        self._mean, self._count = mean, count
        k = len(self.rates) + 1
        self._average = self.beta * self._average + (1.0 - self.beta) * loss
        smoothed = self._average / (1.0 - self.beta ** k)
        self.rates.append(float(self.schedule[k - 1]))
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > self.diverge_factor * self._best:
            self.diverged = True
            self.model.stop_training = True
        self._best = min(self._best, smoothed)
        if k >= self.num_steps:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        restore_training_state(self.model, self._saved)


class StepTimer(keras.callbacks.Callback):
    """Times ``fit`` in optimizer steps: its first call apart (it traces and compiles), the calls
    in the middle of an epoch, and what an epoch adds: its start (the callbacks' ``on_epoch_begin``
    and a first call that starts cold) and its end (the validation, the callbacks' ``on_epoch_end``).

    >>> timer = StepTimer()
    >>> model.fit(train, steps_per_epoch=2, epochs=4, validation_data=dev, callbacks=[backup, timer])
    >>> timer.seconds_per_step, timer.epoch_ends, timer.epoch_starts

    Put it last, so that what the other callbacks do counts in the times. With ``min_seconds`` it
    stops training once the calls in the middle of epochs have taken that long.
    """

    def __init__(self, min_seconds: float = math.inf):
        super().__init__()
        self.min_seconds = min_seconds

    def on_train_begin(self, logs=None):
        self.first_call, self.first_steps = None, 0  # the first call: seconds and optimizer steps
        self.steps, self.seconds = 0, 0.0            # the calls in the middle of an epoch
        self.epoch_starts, self.epoch_start_steps = [], []  # each later epoch's first call, from the
        self.epoch_ends = []                         # end of the epoch before; last call to epoch end
        self._since = None

    def on_epoch_begin(self, epoch, logs=None):
        self._since = self._since or time.perf_counter()
        self._step, self._starting = _step_of(self.model.optimizer), True

    def on_train_batch_end(self, batch, logs=None):
        now, step = time.perf_counter(), _step_of(self.model.optimizer)
        seconds, steps = now - self._since, step - self._step
        if self.first_call is None:
            self.first_call, self.first_steps = seconds, steps
        elif self._starting:
            self.epoch_starts.append(seconds)
            self.epoch_start_steps.append(steps)
        else:
            self.steps, self.seconds = self.steps + steps, self.seconds + seconds
            if self.seconds >= self.min_seconds:
                self.model.stop_training = True
        self._since, self._step, self._starting = now, step, False

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.epoch_ends.append(now - self._since)
        self._since = now

    @property
    def seconds_per_step(self) -> float:
        """Mean seconds per optimizer step of the calls in the middle of epochs (NaN if none)."""
        return self.seconds / self.steps if self.steps else math.nan

    def seconds_per_epoch(self, skip: int = 1) -> float:
        """What an epoch adds to its steps, on average over the epochs after the first ``skip`` (the
        first compiles the validation): its end, and its start beyond a call's steps."""
        ends = self.epoch_ends[skip:]
        starts = [s - n * self.seconds_per_step for s, n in zip(self.epoch_starts, self.epoch_start_steps)]
        return statistics.fmean(ends) + (statistics.fmean(starts[max(skip - 1, 0):]) if starts else 0.0)


class Progress(keras.callbacks.Callback):
    """Where training is, in optimizer steps: steps done of ``total_steps``, the time elapsed and an
    estimate of the time left, the training loss and the last dev loss.

    >>> model.fit(train, steps_per_epoch=40, epochs=50, validation_data=dev, verbose=0,
    ...           callbacks=[Progress(total_steps=50 * 40 * 250)])
    step 250,000/500,000  50%  0:41 elapsed  0:40 left  loss 2.1402  dev 2.1650

    On a terminal (``stream.isatty()``) the line is rewritten in place, at most every ``refresh``
    seconds; elsewhere (a log file, a pipe) a plain line is written at the end of an epoch once
    ``every`` seconds have passed since the last one, and when training ends. The time left is
    extrapolated from the steps per second since the first compiled call; ``earlier`` is training
    time spent before this ``fit`` (a resumed run's first part), counted in the time elapsed.
    """

    def __init__(self, total_steps: int, stream=None, every: float = 10.0, refresh: float = 0.2,
                 earlier: float = 0.0):
        super().__init__()
        self.total_steps = int(total_steps)
        self.stream, self.every, self.refresh, self.earlier = stream, every, refresh, float(earlier)

    def on_train_begin(self, logs=None):
        self._out = self.stream or sys.stdout
        self._terminal = bool(getattr(self._out, "isatty", lambda: False)())
        self._began = time.perf_counter()
        self._rate_from = None  # (time, step) at the end of the first call: the rate counts from there
        self._loss = self._dev = None
        self._step = self._written_step = None
        self._written, self._width = -math.inf, 0

    def on_train_batch_end(self, batch, logs=None):
        self._step = _step_of(self.model.optimizer)
        if self._rate_from is None:
            self._rate_from = (time.perf_counter(), self._step)
        self._loss = (logs or {}).get("loss", self._loss)
        if self._terminal and time.perf_counter() - self._written >= self.refresh:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._loss, self._dev = logs.get("loss", self._loss), logs.get("val_loss", self._dev)
        if self._terminal or time.perf_counter() - self._written >= self.every:
            self._write()

    def on_train_end(self, logs=None):
        self._step = _step_of(self.model.optimizer)
        if self._terminal:
            self._write()
            self._out.write("\n")
            self._out.flush()
        elif self._written_step != self._step:
            self._write()

    def line(self) -> str:
        """The progress as one line of text."""
        now, step = time.perf_counter(), self._step or 0
        parts = [f"step {step:,}/{self.total_steps:,}", f"{step / max(self.total_steps, 1):4.0%}",
                 f"{_clock(self.earlier + now - self._began)} elapsed"]
        if self._rate_from and step > self._rate_from[1] and step < self.total_steps:
            per_step = (now - self._rate_from[0]) / (step - self._rate_from[1])
            parts.append(f"{_clock(per_step * (self.total_steps - step))} left")
        if self._loss is not None:
            parts.append(f"loss {float(self._loss):.4f}")
        if self._dev is not None:
            parts.append(f"dev {float(self._dev):.4f}")
        return "  ".join(parts)

    def _write(self) -> None:
        text = self.line()
        if self._terminal:  # back to the start of the line, and blank out what is left of the last
            self._out.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self._out.write(text + "\n")
        self._out.flush()
        self._written, self._written_step = time.perf_counter(), self._step


def _clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
