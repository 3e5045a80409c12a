"""What every callback here reads of a model in training: its optimizer's rate and step, and a
copy of all that training changes, to put back exactly."""

from __future__ import annotations


def rate_of(optimizer) -> float:
    """The optimizer's learning rate as a Python float (exactly its float32 value)."""
    return float(optimizer.learning_rate.numpy())  # (a third of keras.ops.convert_to_numpy's cost)


def step_of(optimizer) -> int:
    return int(optimizer.iterations.numpy())


def training_state(model) -> tuple:
    """A copy of everything training changes: the model's variables (weights, normalisation
    statistics, dropout seeds) and the optimizer's (step count, learning rate, momentum or Adam
    moments). :func:`restore_training_state` puts it back exactly. Builds the optimizer's variables
    if it has none yet (as ``fit`` would), so that none appears after the copy."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return ([v.numpy() for v in model.variables], [v.numpy() for v in optimizer.variables],
            rate_of(optimizer))


def restore_training_state(model, state: tuple) -> None:
    weights, optimizer_values, rate = state
    for variable, value in zip(model.variables, weights):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, optimizer_values):
        variable.assign(value)
    model.optimizer.learning_rate = rate  # also when it is not among the variables
