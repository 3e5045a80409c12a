"""kmlp.models.mlp: the functional MLP, its parameter count, chunked training and save/load."""

import keras
import numpy as np
import pytest

from kmlp.errors import ConfigError
from kmlp.models.mlp import CharMLP, build_model, compile_model, make_optimizer


def test_lecture_size_has_11897_parameters():
    model = build_model(vocab_size=27, block_size=3, n_embd=10, n_hidden=200)
    assert model.count_params() == 11_897


def test_functional_graph_embedding_reshape_dense_logits():
    model = build_model(vocab_size=27, block_size=3, n_embd=10, n_hidden=200)
    assert isinstance(model, CharMLP) and isinstance(model, keras.src.models.Functional)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Embedding", "Reshape", "Dense", "Dense"]
    assert model.inputs[0].dtype == "int32" and tuple(model.input_shape) == (None, 3)
    assert tuple(model.get_layer("flatten").output.shape) == (None, 30)
    assert model.get_layer("hidden").activation.__name__ == "tanh"
    assert tuple(model.output_shape) == (None, 27)


def test_options_add_layers_and_check_ranges():
    model = build_model(27, 4, 8, 64, n_layers=3, dropout=0.1, norm="layer")
    assert len([l for l in model.layers if l.name.startswith("hidden")]) == 3
    with pytest.raises(ConfigError, match="--n-hidden must be a positive integer"):
        build_model(27, 3, 10, 0)
    with pytest.raises(ConfigError, match="--dropout"):
        build_model(27, 3, 10, 10, dropout=1.5)
    with pytest.raises(ConfigError, match="--optimizer must be sgd, adam or adamw"):
        make_optimizer("rmsprop")


def test_weight_decay_is_applied_by_every_optimizer_and_adamw_has_none_unless_asked():
    assert make_optimizer("adamw", 1e-3).weight_decay == 0.0  # not Keras's own default of 0.004
    for name in ("sgd", "adam", "adamw"):
        assert make_optimizer(name, 1e-3, weight_decay=0.1).weight_decay == pytest.approx(0.1)


def test_each_dropout_layer_draws_its_own_mask():
    model = build_model(27, 3, 4, 64, n_layers=3, dropout=0.5, seed=7)
    x = np.ones((16, 64), "float32")
    masks = [np.asarray(model.get_layer(f"dropout_{i}")(x, training=True)) == 0 for i in (1, 2, 3)]
    assert 0.3 < masks[0].mean() < 0.7
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def _tiny_batch(k=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (8, 3) if k is None else (k, 8, 3)
    return rng.integers(0, 27, shape).astype(np.int32), rng.integers(0, 27, shape[:-1]).astype(np.int32)


def test_a_chunk_is_the_same_as_its_minibatches_one_by_one():
    x, y = _tiny_batch(k=4)
    chunked = compile_model(build_model(seed=1), "sgd", lr=0.1, jit_compile=True)
    stepwise = compile_model(build_model(seed=1), "sgd", lr=0.1, jit_compile=False)
    chunked.train_on_batch(x, y)
    for i in range(4):
        stepwise.train_on_batch(x[i], y[i])
    assert int(chunked.optimizer.iterations) == int(stepwise.optimizer.iterations) == 4
    for a, b in zip(chunked.get_weights(), stepwise.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_saved_model_reloads_to_identical_predictions(tmp_path):
    model = compile_model(build_model(seed=3), "adam", lr=1e-2)
    x, y = _tiny_batch()
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(again, CharMLP)
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))


def test_rdrop_adds_the_symmetric_kl_between_the_two_passes():
    model = compile_model(build_model(27, 3, 4, 16, dropout=0.5, rdrop=2.0, seed=0), "adam")
    rng = np.random.default_rng(0)
    y = np.tile(rng.integers(0, 27, 5), 2).astype(np.int32)  # the doubled batch: rows i and 5 + i alike
    logits = rng.normal(size=(10, 27)).astype(np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    cross_entropy = -log_p[np.arange(10), y].mean()
    p, q = np.exp(log_p[:5]), np.exp(log_p[5:])
    kl_both_ways = (p * np.log(p / q)).sum(-1) + (q * np.log(q / p)).sum(-1)
    loss = float(model.compute_loss(y=y, y_pred=logits, training=True))
    np.testing.assert_allclose(loss, cross_entropy + 2.0 * 0.5 * kl_both_ways.mean(), rtol=1e-5)
    # Evaluation is plain cross-entropy, and so is training on two identical passes.
    np.testing.assert_allclose(float(model.compute_loss(y=y, y_pred=logits, training=False)),
                               cross_entropy, rtol=1e-5)
    same = np.concatenate([logits[:5], logits[:5]])
    np.testing.assert_allclose(float(model.compute_loss(y=y, y_pred=same, training=True)),
                               float(model.compute_loss(y=y, y_pred=same, training=False)), rtol=1e-6)


@pytest.mark.parametrize("chunked", [True, False])
def test_rdrop_trains_on_twice_the_batch_and_survives_save_and_load(tmp_path, chunked):
    model = compile_model(build_model(27, 3, 4, 16, dropout=0.3, rdrop=1.0, seed=0), "adam", lr=1e-2,
                          jit_compile=chunked)
    x, y = _tiny_batch(k=3 if chunked else None)
    rows = []
    compute_loss = model.compute_loss
    model.compute_loss = lambda x, y, y_pred, *a, **kw: (rows.append(y_pred.shape[0]),
                                                        compute_loss(x, y, y_pred, *a, **kw))[1]
    model.train_on_batch(x, y)
    assert rows == [16] * len(rows) and rows  # the 8 examples of each step, twice
    assert tuple(model(x[0] if chunked else x, training=True).shape) == (16, 27)  # the fork stacks them
    del model.compute_loss
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(again, CharMLP) and again.rdrop == 1.0
    with pytest.raises(ConfigError, match="--rdrop needs --dropout"):
        build_model(27, 3, 4, 16, rdrop=1.0)


def test_mixed_bfloat16_computes_in_bfloat16_and_keeps_weights_logits_and_loss_in_float32():
    model = compile_model(build_model(27, 3, 4, 32, n_layers=2, norm="batch", dropout=0.2, rdrop=1.0,
                                      precision="mixed_bfloat16", seed=0), "adam")
    assert all(v.dtype == "float32" for v in model.weights)  # what the optimizer updates
    assert model.get_layer("hidden_1").output.dtype == "bfloat16"
    assert model.get_layer("batch_norm_2").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("logits").dtype_policy.name == "float32"
    x, y = _tiny_batch()
    logits = model(x, training=False)
    assert logits.dtype == "float32"
    assert model.compute_loss(y=np.concatenate([y, y]), y_pred=model(x, training=True)).dtype == "float32"
    # bfloat16 keeps about 3 significant digits: the float32 model with the same weights is close.
    same = build_model(27, 3, 4, 32, n_layers=2, norm="batch", dropout=0.2, rdrop=1.0, seed=0)
    same.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(logits), np.asarray(same(x, training=False)), atol=0.1)
    with pytest.raises(ValueError, match="precision"):
        build_model(27, 3, 4, 32, precision="float16")


def test_a_mixed_bfloat16_run_trains_saves_loads_evaluates_samples_and_exports(tiny_names_file, tmp_path):
    import tensorflow as tf

    from kmlp.config import Config
    from kmlp.errors import ConfigError
    from kmlp.export.savedmodel import export_run
    from kmlp.generation.sample import NameModel
    from kmlp.runs.rundir import load_run
    from kmlp.training.setup import EVAL_BATCH, evaluate_loss
    from kmlp.training.train import train

    config = Config(block_size=3, n_embd=4, n_hidden=32, n_layers=2, norm="batch", dropout=0.2, rdrop=1.0,
                    precision="mixed_bfloat16", jit_compile=False, batch_size=16, steps=40,
                    optimizer="adam", lr=1e-2, decay_at=[])
    trained = train(config, tiny_names_file, out_dir=tmp_path / "run", verbose=0, log=lambda *_: None)
    assert trained.metrics["dev_loss"] < np.log(len(trained.data.vocab))
    run = load_run(tmp_path / "run")
    assert run.config.precision == "mixed_bfloat16"
    assert [l.dtype_policy.name for l in run.model.layers if l.name.startswith("hidden")] == ["mixed_bfloat16"] * 2
    x = _tiny_batch()[0] % len(run.vocab)
    np.testing.assert_array_equal(run.model(x, training=False), trained.model(x, training=False))
    dev = trained.data.dataset("dev", EVAL_BATCH, shuffle=False)
    assert evaluate_loss(run.model, dev) == pytest.approx(trained.metrics["dev_loss"], abs=1e-6)

    lm = NameModel(run.model, run.vocab)
    assert lm.sample(5, seed=1) == lm.sample(5, seed=1) and len(lm.sample(5, seed=1)) == 5
    (log_likelihood, tokens), = lm.score(["emma"])
    assert np.isfinite(log_likelihood) and log_likelihood < 0 and tokens == 5
    served = tf.saved_model.load(str(export_run(run)))
    probs = served.signatures["serving_default"](context=tf.constant(["emm", ""]))["probabilities"]
    assert probs.dtype == tf.float32
    np.testing.assert_allclose(probs.numpy(), lm.next_probs(lm.context_ids(np.array(["emm", ""]))), atol=1e-6)
    np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, atol=1e-5)
    names = served.signatures["generate"](count=tf.constant(5), seed=tf.constant(1, tf.int64),
                                          temperature=tf.constant(1.0))["names"]
    assert [n.decode() for n in names.numpy()] == lm.sample(5, seed=1)
    with pytest.raises(ConfigError, match="--precision"):
        config.replace(precision="bfloat16").validate()


def test_rdrop_runs_the_layers_before_the_first_dropout_once_with_the_same_result():
    """TwoPasses (before the first dropout) gives the gradients that stacking the whole input did:
    batch statistics over a batch stacked on itself are those of the batch. (With SGD: Keras's Adam
    updates an embedding from its gradient per lookup, and the fork has half as many lookups.)"""
    from kmlp.models.mlp import TwoPasses

    def trained(fork):
        model = build_model(27, 3, 4, 32, n_layers=2, norm="batch", dropout=0.2, rdrop=1.0, seed=5)
        assert [type(l).__name__ for l in model.layers[6:8]] == ["TwoPasses", "Dropout"]
        if not fork:  # the same layers, with the input stacked before the embedding instead
            inputs = keras.Input((3,), dtype="int32")
            h = inputs
            for layer in model.layers[1:]:
                h = h if isinstance(layer, TwoPasses) else layer(h)
            model = CharMLP(inputs, h, rdrop=1.0)
        compile_model(model, "sgd", lr=0.5, jit_compile=False)
        x, y = _tiny_batch(k=3)
        model.train_on_batch(x, y)
        return model

    stacked, forked = trained(False), trained(True)
    assert not any(isinstance(l, TwoPasses) for l in stacked.layers)
    for a, b in zip(stacked.get_weights(), forked.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
