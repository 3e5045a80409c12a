"""Keras callbacks, one job each, all counting optimizer steps (``optimizer.iterations``):

    schedules.py    StepDecay, CosineDecay: the learning rate over the run
    loss_curve.py   LossCurve: the training loss of every step, to a CSV file
    tensorboard.py  TensorBoard: Keras's, in optimizer steps, with the embedding projector
    timing.py       ElapsedTime (across resumed parts), StepTimer (cost of a step and an epoch)
    progress.py     Progress: one line, steps done of the total, time left, loss
    stop_at.py      StopAt: ending a training at a given step, its schedule planned for more
    deadline.py     Deadline: ending a training early when going on would end after a deadline
    early_stopping.py  EarlyStopping: Keras's, patience in steps, best weights kept in the backup
    lr_finder.py    LRFinder: Leslie Smith's learning-rate range test
    state.py        the optimizer's rate and step; a copy of the training state, put back exactly
"""
