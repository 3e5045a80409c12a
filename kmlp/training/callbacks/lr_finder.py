"""Leslie Smith's learning-rate range test as a Keras callback (see :mod:`kmlp.training.lr_find`)."""

from __future__ import annotations

import math

import keras
import numpy as np

from kmlp.config import check_range_test
from kmlp.training.callbacks.schedules import positive
from kmlp.training.callbacks.state import restore_training_state, training_state


class LRFinder(keras.callbacks.Callback):
    """The learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural
    Networks", 2017; fastai's ``lr_find``): one minibatch at each of ``num_steps`` rates spaced
    exponentially from ``start_lr`` to ``end_lr``, recording the loss, then everything put back.

    >>> finder = LRFinder(1e-3, 1.0, num_steps=1000)
    >>> model.fit(train_minibatches, steps_per_epoch=1000, epochs=1, callbacks=[finder])
    >>> finder.rates, finder.losses, finder.smoothed   # see kmlp.training.lr_find for a suggested rate

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
        self.diverge_factor = positive("diverge_factor", diverge_factor)
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
