"""Keras callbacks for the learning rate."""

from __future__ import annotations

import keras


class StepDecay(keras.callbacks.Callback):
    """Multiply the learning rate by ``factor`` at each milestone, counted in optimizer steps.

    Steps are read from ``optimizer.iterations``, so the schedule holds however many optimizer steps
    one Keras "batch" runs. The rate in force is logged into the history as ``lr``.

    Example (the lecture's recipe: 0.1, then 0.01 from step 100,000):

    >>> model.fit(train, steps_per_epoch=1000, epochs=200,
    ...           callbacks=[StepDecay(0.1, milestones=[100_000], factor=0.1)])
    """

    def __init__(self, initial_lr: float, milestones=(), factor: float = 0.1):
        super().__init__()
        self.initial_lr = float(initial_lr)
        self.milestones = sorted(int(m) for m in milestones)
        self.factor = float(factor)

    def rate_at(self, step: int) -> float:
        cuts = sum(1 for m in self.milestones if step >= m)
        return self.initial_lr * self.factor ** cuts

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        rate = self.rate_at(int(optimizer.iterations.numpy()))
        if float(optimizer.learning_rate.numpy()) != rate:
            optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())
