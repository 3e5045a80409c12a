"""kmlp: a character-level MLP language model for names, after Bengio et al. (2003), "A Neural
Probabilistic Language Model", as built in the "makemore, part 2" lecture, the Keras way.

    from kmlp import NamesData, build_model, compile_model

    data = NamesData.from_file("names.txt", block_size=3)
    model = compile_model(build_model(len(data.vocab), block_size=3), "sgd", lr=0.1)
    model.fit(data.dataset("train", 32), steps_per_epoch=1000, epochs=10,
              validation_data=data.dataset("dev", 4096))

Names are imported on first use, so ``import kmlp`` (and ``kmlp --help``) does not load TensorFlow.
The package is laid out as the pipeline runs, each stage a subpackage that imports only the ones
above it in this list:

    errors.py, config.py, utils/   every error the CLI reports; Config, presets, option rules
    data/                          names files -> vocabulary -> splits -> tf.data minibatches
    models/                        the Keras functional model
    runs/                          a run folder on disk: what kmlp wrote, its lock, loading it back
    generation/                    sampling and scoring names
    plots.py                       pictures of a training and of the embeddings
    training/                      fit, time budgets, callbacks, backups, several workers,
                                   TensorBoard logs, the learning-rate range test, tuning
    export/                        SavedModel and LiteRT
    serving/                       TensorFlow Serving's REST API and the playground page
    cli/                           the ``kmlp`` command, a thin layer over all of the above
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "config": ["PRESETS", "Config", "load_config_file", "preset"],
    "errors": ["ConfigError", "DataError", "RunError", "TrainingDiverged"],
    "data.files": ["load_words"],
    "data.vocab": ["Vocabulary"],
    "data.splits": ["split_words"],
    "data.pipeline": ["NamesData", "build_dataset", "make_dataset"],
    "models.mlp": ["CharMLP", "build_model", "compile_model", "make_optimizer"],
    "training.callbacks.schedules": ["CosineDecay", "StepDecay"],
    "training.callbacks.loss_curve": ["LossCurve"],
    "training.callbacks.tensorboard": ["TensorBoard"],
    "training.callbacks.timing": ["ElapsedTime", "StepTimer"],
    "training.callbacks.progress": ["Progress"],
    "training.callbacks.lr_finder": ["LRFinder"],
    "training.lr_find": ["LRFindResult", "lr_find", "range_test"],
    "training.setup": ["Setup", "build_compiled_model", "evaluate_loss", "make_strategy", "plan_training",
                       "prepare"],
    "training.results": ["TrainResult"],
    "training.train": ["train"],
    "training.tune": ["tune"],
    "runs.rundir": ["Run", "load_run"],
    "runs.start": ["start_from"],
    "generation.sample": ["NameModel", "sample_names", "score_names"],
    "export.savedmodel": ["export_run"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kmlp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
