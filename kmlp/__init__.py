"""kmlp: a character-level MLP language model for names, after Bengio et al. (2003), "A Neural
Probabilistic Language Model", as built in the "makemore, part 2" lecture, the Keras way.

    from kmlp import NamesData, build_model, compile_model

    data = NamesData.from_file("names.txt", block_size=3)
    model = compile_model(build_model(len(data.vocab), block_size=3), "sgd", lr=0.1)
    model.fit(data.dataset("train", 32), steps_per_epoch=1000, epochs=10,
              validation_data=data.dataset("dev", 4096))

Names are imported on first use, so ``import kmlp`` (and ``kmlp --help``) does not load TensorFlow.
The functions named like their modules are imported from them: ``from kmlp.train import train``,
``from kmlp.lr_find import lr_find``, ``from kmlp.tune import tune`` (``kmlp.train`` is the module).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "config": ["PRESETS", "Config", "ConfigError", "load_config_file", "preset"],
    "data": ["DataError", "NamesData", "Vocabulary", "build_dataset", "load_words", "make_dataset",
             "split_words"],
    "model": ["CharMLP", "build_model", "compile_model", "make_optimizer"],
    "callbacks": ["CosineDecay", "ElapsedTime", "LRFinder", "LossCurve", "Progress", "StepDecay", "StepTimer",
                  "TensorBoard"],
    "lr_find": ["LRFindResult"],
    "runs": ["Run", "RunError", "load_run"],
    "train": ["Setup", "TrainingDiverged", "TrainResult", "build_compiled_model", "evaluate_loss",
              "make_strategy", "plan_training", "prepare"],
    "sample": ["NameModel", "sample_names", "score_names"],
    "export": ["export_run"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kmlp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
