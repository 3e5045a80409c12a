"""Ending a training at a given optimizer step, its learning-rate schedule still the one planned for
the whole run."""

from __future__ import annotations

import keras

from kmlp.training.callbacks.state import step_of


class StopAt(keras.callbacks.Callback):
    """Stops training at the end of the call that reaches optimizer step ``step``; the schedule and
    the epochs stay those planned for the whole run (Keras ends the epoch as usual: its evaluation,
    every callback's ``on_epoch_end``).

    >>> model.fit(train, steps_per_epoch=40, epochs=10, callbacks=[CosineDecay(1e-2, 400), StopAt(300)])

    It counts optimizer steps (``optimizer.iterations``), not Keras "batches", so it stays right when
    one batch runs several optimizer steps.
    """

    def __init__(self, step: int):
        super().__init__()
        self.step = int(step)

    def on_train_batch_end(self, batch, logs=None):
        if step_of(self.model.optimizer) >= self.step:
            self.model.stop_training = True
