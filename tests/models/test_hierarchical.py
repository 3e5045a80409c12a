"""kmlp.models.hierarchical: the lecture's part 5 model, its parameter counts, its layers, the lecture's
initialisations; and a hierarchical run through everything a flat run goes through."""

import keras
import numpy as np
import pytest
from conftest import HIERARCHICAL

from kmlp.config import Config, parameter_count, preset
from kmlp.models.mlp import CharMLP, build_model
from kmlp.training.setup import build_compiled_model


@pytest.mark.parametrize("name, trainable, with_statistics", [("part3", 12_097, 12_497), ("part5", 76_579, 77_347)])
def test_the_lecture_presets_have_the_lectures_parameter_counts(name, trainable, with_statistics):
    config = preset(name)
    model = build_compiled_model(config, 27)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    assert model.count_params() == with_statistics == parameter_count(
        27, config.block_size, config.n_embd, config.n_hidden, config.n_layers, config.norm, config.arch, config.fuse)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [(n.momentum, n.epsilon) for n in norms] == [(config.norm_momentum, config.norm_epsilon)] * config.n_layers
    assert all(not layer.use_bias for layer in model.layers if layer.name.startswith("hidden"))


def test_levels_fuse_consecutive_positions_and_batch_norm_spans_batch_and_positions():
    model = build_model(27, 8, 3, 5, n_layers=3, norm="batch", arch="hierarchical", norm_momentum=0.9, seed=1)
    assert isinstance(model, CharMLP)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Embedding", *["Reshape", "Dense", "BatchNormalization", "Activation"] * 3, "Dense"]
    shapes = [tuple(model.get_layer(f"tanh_{level}").output.shape) for level in (1, 2, 3)]
    assert shapes == [(None, 4, 5), (None, 2, 5), (None, 5)]
    x = np.random.default_rng(0).integers(0, 27, size=(16, 8)).astype("int32")
    table = model.get_layer("embedding").embeddings.numpy()
    fused = keras.Model(model.input, model.get_layer("fuse_1").output)(x).numpy()
    for group in range(4):  # positions 2g and 2g + 1, side by side
        np.testing.assert_array_equal(fused[:, group], np.concatenate([table[x[:, 2 * group]],
                                                                       table[x[:, 2 * group + 1]]], axis=1))
    before_norm = keras.Model(model.input, model.get_layer("hidden_1").output)(x).numpy()  # [16, 4, 5]
    model(x, training=True)
    np.testing.assert_allclose(model.get_layer("batch_norm_1").moving_mean.numpy(),
                               0.1 * before_norm.mean(axis=(0, 1)), rtol=1e-4, atol=1e-6)


def test_the_lectures_initialisations():
    def spread(model, layer):
        return float(np.std(model.get_layer(layer).kernel.numpy()))

    part3 = build_model(27, 3, 10, 200, norm="batch", init="kaiming", seed=0)
    assert spread(part3, "hidden") == pytest.approx(5 / 3 / np.sqrt(30), rel=0.05)
    assert spread(part3, "logits") == pytest.approx(0.01, rel=0.05)
    part5 = build_model(27, 8, 24, 128, n_layers=3, norm="batch", init="fan_in", arch="hierarchical", seed=0)
    for layer, fan_in in (("hidden_1", 48), ("hidden_2", 256), ("hidden_3", 256)):
        assert spread(part5, layer) == pytest.approx(1 / np.sqrt(fan_in), rel=0.05), layer
    assert spread(part5, "logits") == pytest.approx(0.1 / np.sqrt(128), rel=0.05)
    for model in (part3, part5):
        assert not model.get_layer("logits").bias.numpy().any()
        assert float(np.std(model.get_layer("embedding").embeddings.numpy())) == pytest.approx(1.0, rel=0.1)


@pytest.fixture(scope="module")
def hierarchical_run(hierarchical_run_dir):
    from kmlp.runs.rundir import load_run

    return load_run(hierarchical_run_dir)


def test_a_hierarchical_run_trains_saves_and_loads_in_safe_mode(hierarchical_run):
    run = hierarchical_run
    assert run.metrics["dev_loss"] < np.log(len(run.vocab))
    assert run.config == Config(**{**run.config.to_dict(), **HIERARCHICAL})
    again = keras.saving.load_model(run.path / "model.keras", safe_mode=True)
    assert [type(layer).__name__ for layer in again.layers].count("Reshape") == 2
    x = np.random.default_rng(1).integers(0, len(run.vocab), size=(6, 4)).astype("int32")
    np.testing.assert_array_equal(again(x, training=False), run.model(x, training=False))


def test_a_hierarchical_run_samples_scores_and_exports_both_formats(hierarchical_run):
    import tensorflow as tf

    from kmlp.export.litert import LiteRTModel, generate_names
    from kmlp.export.savedmodel import export_run
    from kmlp.generation.sample import NameModel

    run = hierarchical_run
    lm = NameModel(run.model, run.vocab)
    names = lm.sample(20, seed=3)
    assert names == lm.sample(20, seed=3) and len(names) == 20
    (log_likelihood, tokens), = lm.score(["emma"])
    assert np.isfinite(log_likelihood) and log_likelihood < 0 and tokens == 5
    served = tf.saved_model.load(str(export_run(run)))
    probs = served.signatures["serving_default"](context=tf.constant(["emm", ""]))["probabilities"]
    np.testing.assert_allclose(probs.numpy(), lm.next_probs(lm.context_ids(np.array(["emm", ""]))), atol=1e-6)
    drawn = served.signatures["generate"](count=tf.constant(20), seed=tf.constant(3, tf.int64),
                                          temperature=tf.constant(1.0))["names"]
    assert [n.decode() for n in drawn.numpy()] == names
    tflite = export_run(run, format="litert") / "model.tflite"
    assert generate_names(LiteRTModel(tflite), 20, seed=3) == names
    assert generate_names(LiteRTModel(tflite), 20, seed=3, top_k=5, prefix="e") == lm.sample(20, seed=3, top_k=5,
                                                                                               prefix="e")


def test_every_regulariser_and_precision_of_the_flat_model_builds_and_trains_on_the_hierarchical_one(tmp_path):
    from kmlp.models.mlp import compile_model

    model = build_model(27, 9, 4, 8, n_layers=2, fuse=3, norm="layer", dropout=0.2, rdrop=1.0, arch="hierarchical",
                        precision="mixed_bfloat16", init="kaiming", seed=0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("LayerNormalization") == 2 and kinds.count("Dropout") == 2 and "TwoPasses" in kinds
    compile_model(model, "adam", lr=1e-2, jit_compile=False)
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 27, size=(3, 16, 9)).astype("int32"), rng.integers(0, 27, size=(3, 16)).astype("int32")
    loss = model.train_on_batch(*chunk)
    assert np.isfinite(loss) and int(model.optimizer.iterations) == 3  # a chunk of three steps in one call
    assert model(chunk[0][0], training=False).dtype == "float32"
    model.save(tmp_path / "model.keras")
    again = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(again(chunk[0][0], training=False), model(chunk[0][0], training=False))
