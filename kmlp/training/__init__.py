"""Training: a configuration and its data in, a run folder out.

    setup.py        prepare: seed, threads, strategy, compiled model, plan
    train.py        train: fit with backups, evaluate, publish the run
    results.py      metrics.json, the run folder, the verdict on the fit
    budget.py       --minutes: measure this machine's speed, plan the steps, end early if behind
    backup.py       the backup of a training in progress, and resuming it
    small_lists.py  early stopping on by default, and a note on a small dev split
    evaluate.py     a saved run's loss on a split, recorded in the run
    callbacks/      Keras callbacks: schedules, curve, TensorBoard, timing, progress, deadline, range test
    logs.py         TensorBoard logs of trainings, trials and range tests
    distributed.py  training under MultiWorkerMirroredStrategy; cluster.py reads TF_CONFIG
    lr_find.py      the learning-rate range test
    tune.py         the hyperparameter search with KerasTuner
"""
