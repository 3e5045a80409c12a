"""kmlp.training.lr_find and the LRFinder callback: the range test, its restore, its suggestion, `kmlp lr-find`."""

import json

import keras
import numpy as np
import pytest

from kmlp.config import preset
from kmlp.data.pipeline import NamesData
from kmlp.models.mlp import build_model, compile_model
from kmlp.training.callbacks.lr_finder import LRFinder
from kmlp.training.lr_find import lr_find, suggest_lr, valley_floor
from kmlp.training.setup import build_compiled_model
from kmlp.utils.numeric import centred_average

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_setup(words, optimizer, seed=0, dropout=0.0):
    keras.utils.set_random_seed(seed)
    data = NamesData.from_words(words, block_size=3)
    model = build_model(len(data.vocab), block_size=3, n_embd=4, n_hidden=16, dropout=dropout,
                        norm="batch", seed=seed)
    compile_model(model, optimizer, jit_compile=False)
    return model, data


def state(model):
    opt = model.optimizer
    return ([v.numpy().copy() for v in model.variables], [v.numpy().copy() for v in opt.variables],
            float(keras.ops.convert_to_numpy(opt.learning_rate)))


def warm_up(model, data, steps=6):
    model.fit(data.dataset("train", 8, seed=1), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)


@pytest.mark.parametrize("make_optimizer", [lambda: keras.optimizers.Adam(3e-3),
                                            lambda: keras.optimizers.SGD(0.05, momentum=0.9)])
def test_range_test_leaves_weights_and_optimizer_state_exactly_as_they_were(tiny_words, make_optimizer):
    model, data = tiny_setup(tiny_words, make_optimizer(), dropout=0.1)
    warm_up(model, data)  # momentum / Adam moments and the step count are no longer zero
    before = state(model)
    assert int(model.optimizer.iterations) == 6 and any(np.abs(v).sum() > 0 for v in before[1][2:])
    result = lr_find(model, data.dataset("train", 8), start_lr=1e-3, end_lr=10.0, num_steps=40)
    assert len(result.rates) >= 2
    after = state(model)
    for a, b in zip(before[0] + before[1], after[0] + after[1]):
        np.testing.assert_array_equal(a, b)
    assert after[2] == before[2]

    # Training then goes on exactly as if the test had never run.
    twin, _ = tiny_setup(tiny_words, make_optimizer(), dropout=0.1)
    warm_up(twin, data)
    warm_up(model, data, steps=5)
    warm_up(twin, data, steps=5)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_rates_are_exponentially_spaced_and_losses_smoothed_with_bias_correction(tiny_words):
    model, data = tiny_setup(tiny_words, keras.optimizers.SGD(0.1))
    result = lr_find(model, data.dataset("train", 8), start_lr=1e-3, end_lr=1e-1, num_steps=30)
    assert not result.diverged and len(result.rates) == 30
    np.testing.assert_allclose(result.rates, np.geomspace(1e-3, 1e-1, 30))
    average, beta = 0.0, 0.98
    for k, (loss, smooth) in enumerate(zip(result.losses, result.smoothed), start=1):
        average = beta * average + (1 - beta) * loss
        assert smooth == pytest.approx(average / (1 - beta ** k))
    assert result.smoothed[0] == pytest.approx(result.losses[0])
    assert 1e-3 <= result.suggested_lr <= 1e-1


def test_a_huge_end_rate_stops_the_test_when_the_loss_diverges(tiny_words):
    model, data = tiny_setup(tiny_words, keras.optimizers.SGD(0.1))
    before = state(model)
    result = lr_find(model, data.dataset("train", 8), start_lr=1e-2, end_lr=1e6, num_steps=200)
    assert result.diverged and len(result.rates) < 200
    last = result.smoothed[-1]
    assert not np.isfinite(last) or last > 4 * min(result.smoothed[:-1])
    assert result.suggested_lr < result.rates[-1]
    for a, b in zip(before[0], state(model)[0]):  # the blown-up weights are gone
        np.testing.assert_array_equal(a, b)


def test_finder_counts_minibatches_across_epochs(tiny_words):
    model, data = tiny_setup(tiny_words, keras.optimizers.SGD(0.1))
    finder = LRFinder(1e-3, 1e-1, num_steps=12)
    model.fit(data.dataset("train", 8), steps_per_epoch=5, epochs=4, callbacks=[finder], verbose=0,
              shuffle=False)
    assert len(finder.rates) == 12 and all(np.isfinite(finder.losses))
    assert int(model.optimizer.iterations) == 0  # restored


def test_suggestion_is_half_the_floor_of_a_noisy_valley():
    rng = np.random.default_rng(0)
    rates = np.geomspace(1e-4, 10, 500)
    losses = 2 + (np.log10(rates) + 1) ** 2 + rng.normal(0, 0.3, rates.size)  # floor at 0.1
    floor, _ = valley_floor(rates, losses)
    assert 0.07 < floor < 0.14
    assert suggest_lr(rates, losses) == pytest.approx(floor / 2)
    centres, averaged = centred_average(rates, losses)
    assert len(centres) == len(averaged) == 500 - 50 + 1
    losses[400:] = np.nan  # a blow-up counts as infinitely bad, not as missing
    assert valley_floor(rates, losses)[0] == pytest.approx(floor)
    with pytest.raises(ValueError, match="no finite"):
        valley_floor(rates[:3], [np.nan, np.inf, np.nan])


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_lr=0), "--start-lr"), (dict(start_lr=1.0, end_lr=0.5), "above"),
    (dict(num_steps=1), "--num-steps"), (dict(beta=1.0), "beta"),
])
def test_finder_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRFinder(**kwargs)


def test_cli_lr_find_writes_curve_and_prints_json(tiny_names_file, tmp_path, capsys):
    from kmlp.cli.main import main

    out = tmp_path / "lr"
    code = main(["lr-find", "--data", str(tiny_names_file), "--preset", "lecture", "--n-hidden", "16",
                 "--batch-size", "8", "--num-steps", "60", "--start-lr", "0.001", "--end-lr", "3",
                 "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert 0.001 <= result["suggested_lr"] <= 3 and result["method"] == "floor/2"
    assert result["suggested_lr"] == pytest.approx(result["floor_lr"] / 2)
    rows = (out / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss" and len(rows) == 1 + result["steps_run"]
    assert (out / "lr_find.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.integration
def test_suggested_rate_for_the_lecture_model_is_near_the_lectures(names_path):
    config = preset("lecture")
    data = NamesData.for_config(names_path, config)
    keras.utils.set_random_seed(config.seed)
    model = build_compiled_model(config, len(data.vocab))
    result = lr_find(model, data.dataset("train", config.batch_size), num_steps=500)
    assert not result.diverged
    assert 0.03 <= result.suggested_lr <= 0.5, result.to_json()


def test_cli_lr_find_reports_a_loss_that_diverges_at_once(tiny_names_file, tmp_path, capsys):
    from kmlp.cli.main import main

    code = main(["lr-find", "--data", str(tiny_names_file), "--optimizer", "adam", "--n-hidden", "16",
                 "--batch-size", "8", "--start-lr", "1e8", "--end-lr", "1e12", "--num-steps", "50",
                 "--out", str(tmp_path / "lr")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("kmlp: error: the loss diverged within") and "\n" not in err
    assert "--start-lr" in err and not (tmp_path / "lr").exists()
