"""The progress line of a training, in optimizer steps: done of the total, time elapsed and left,
the loss and the last dev loss.

They count optimizer steps with ``optimizer.iterations`` rather than Keras "batches", so they stay
right when one batch runs several optimizer steps (a :class:`~kmlp.models.mlp.CharMLP` chunk of K
minibatches).
"""

from __future__ import annotations

import math
import sys
import time

import keras

from kmlp.training.callbacks.state import step_of


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
        self._step = step_of(self.model.optimizer)
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
        self._step = step_of(self.model.optimizer)
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
