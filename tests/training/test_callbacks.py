"""kmlp.callbacks: schedules counted in optimizer steps, the loss-curve recorder, Keras's TensorBoard
callback at optimizer steps, rate options in train(), the step timer and the progress line."""

import csv
import io
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmlp.config import Config
from kmlp.data.pipeline import NamesData
from kmlp.models.mlp import build_model, compile_model, make_optimizer
from kmlp.training.callbacks.loss_curve import LossCurve
from kmlp.training.callbacks.progress import Progress
from kmlp.training.callbacks.schedules import CosineDecay, StepDecay
from kmlp.training.callbacks.tensorboard import TensorBoard
from kmlp.training.callbacks.timing import ElapsedTime, StepTimer
from kmlp.training.train import train


class RateLog(keras.callbacks.Callback):
    """The optimizer step and the rate in force at the start of every batch (after the schedule)."""

    def on_train_begin(self, logs=None):
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        self.seen.append((int(opt.iterations), float(keras.ops.convert_to_numpy(opt.learning_rate))))


def tiny_model(words, optimizer=None, seed=0):
    data = NamesData.from_words(words, block_size=3)
    model = build_model(len(data.vocab), block_size=3, n_embd=4, n_hidden=16, seed=seed)
    compile_model(model, optimizer or keras.optimizers.SGD(0.1), jit_compile=False)
    return model, data


def fit(model, data, callbacks, steps_per_call=1, calls=10, epochs=1):
    ds = data.dataset("train", 8, steps_per_call=steps_per_call)
    return model.fit(ds, steps_per_epoch=calls, epochs=epochs, callbacks=callbacks, verbose=0,
                     shuffle=False)  # the pipeline shuffles


@pytest.mark.parametrize("steps_per_call, milestones", [(1, [7, 13]), (5, [10, 25])])
def test_step_decay_rate_in_force_is_the_schedule_at_every_step(tiny_words, steps_per_call, milestones):
    model, data = tiny_model(tiny_words)
    decay, log = StepDecay(0.1, milestones, factor=0.1), RateLog()
    history = fit(model, data, [decay, log], steps_per_call=steps_per_call, calls=12 // steps_per_call + 2,
                  epochs=3)
    assert int(model.optimizer.iterations) == len(log.seen) * steps_per_call
    for start, rate in log.seen:  # a chunk runs all its steps at the rate set at its start
        for step in range(start, start + steps_per_call):
            expected = 0.1 * 0.1 ** sum(step >= m for m in milestones)
            assert rate == np.float32(expected), (step, rate)
    assert {r for _, r in log.seen} == {np.float32(0.1), np.float32(0.01), np.float32(0.001)}
    assert history.history["lr"][-1] == pytest.approx(0.001)


def test_cosine_decay_follows_half_a_cosine_then_stays(tiny_words):
    model, data = tiny_model(tiny_words)
    log = RateLog()
    fit(model, data, [CosineDecay(0.2, decay_steps=20, alpha=0.1), log], calls=25)
    for step, rate in log.seen:
        expected = 0.2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, 20) / 20)))
        assert rate == pytest.approx(expected, rel=1e-6), step
    assert log.seen[0][1] == pytest.approx(0.2) and log.seen[-1][1] == pytest.approx(0.02)


def test_a_cut_by_reduce_lr_on_plateau_scales_the_rest_of_the_schedule(tiny_words):
    model, data = tiny_model(tiny_words)
    # min_delta so large that no epoch after the first counts as an improvement: a cut after epoch 2
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e9)
    log = RateLog()
    fit(model, data, [StepDecay(0.1, [25], 0.1), plateau, log], calls=10, epochs=3)
    rates = dict(log.seen)
    assert rates[0] == np.float32(0.1) and rates[19] == np.float32(0.1)
    assert rates[20] == np.float32(0.05)         # halved by the plateau after the second epoch
    assert rates[25] == np.float32(0.005)        # and the milestone still applies on top


def test_loss_curve_recovers_each_batch_loss_from_the_running_mean(tiny_words):
    model_a, data = tiny_model(tiny_words, seed=3)
    curve = LossCurve()
    fit(model_a, data, [curve], calls=30)
    model_b, _ = tiny_model(tiny_words, seed=3)
    per_batch = fit(model_b, data, [], calls=1, epochs=30).history["loss"]  # one batch per epoch
    assert curve.steps == list(range(1, 31))
    np.testing.assert_allclose(curve.losses, per_batch, rtol=1e-5)
    assert curve.rates == [pytest.approx(0.1)] * 30


def test_loss_curve_gives_one_point_per_chunk(tiny_words):
    model, data = tiny_model(tiny_words)
    curve = LossCurve()
    history = fit(model, data, [curve], steps_per_call=4, calls=5, epochs=2)
    assert curve.steps == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    for epoch, mean in enumerate(history.history["loss"]):  # the epoch mean is the mean of its chunks
        assert np.mean(curve.losses[5 * epoch: 5 * epoch + 5]) == pytest.approx(mean, rel=1e-5)


def logged(run_dir, tag) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={TENSORS: 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["tensors"]:
        return []
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]


def test_tensorboard_logs_each_chunk_and_epoch_at_its_optimizer_step(tiny_words, tmp_path):
    model, data = tiny_model(tiny_words)
    curve, board = LossCurve(), TensorBoard(tmp_path / "logs", update_freq="batch")
    history = model.fit(data.dataset("train", 8, steps_per_call=4), steps_per_epoch=5, epochs=2,
                        validation_data=data.dataset("dev", 64), verbose=0, shuffle=False,
                        callbacks=[StepDecay(0.1, [20], 0.5), curve, board])
    batch = logged(tmp_path / "logs" / "train", "batch_loss")
    assert [step for step, _ in batch] == curve.steps == list(range(4, 41, 4))  # not Keras's 1, 2, ...
    np.testing.assert_allclose([loss for _, loss in batch], curve.losses, rtol=1e-6)
    assert logged(tmp_path / "logs" / "train", "batch_learning_rate") == [
        (s, pytest.approx(0.1 if s <= 20 else 0.05)) for s in range(4, 41, 4)]
    for run, key in [("train", "loss"), ("validation", "val_loss")]:
        assert logged(tmp_path / "logs" / run, "epoch_loss") == [
            (20, pytest.approx(history.history[key][0])), (40, pytest.approx(history.history[key][1]))]
    assert logged(tmp_path / "logs" / "train", "epoch_learning_rate") == [
        (20, pytest.approx(0.1)), (40, pytest.approx(0.05))]
    assert logged(tmp_path / "logs" / "train", "epoch_lr") == []  # the rate is logged once, by its Keras name


@pytest.mark.parametrize("update_freq, steps", [(None, []), (2, [4, 8, 12]), ("batch", [2, 4, 6, 8, 10, 12])])
def test_tensorboard_update_freq_counts_batches_as_keras_does(tiny_words, tmp_path, update_freq, steps):
    model, data = tiny_model(tiny_words)
    board = TensorBoard(tmp_path / "logs", **({"update_freq": update_freq} if update_freq else {}))
    fit(model, data, [board], steps_per_call=2, calls=3, epochs=2)
    assert [step for step, _ in logged(tmp_path / "logs" / "train", "batch_loss")] == steps
    assert [step for step, _ in logged(tmp_path / "logs" / "train", "epoch_loss")] == [6, 12]


def test_tensorboard_refuses_labels_that_do_not_fit_the_embedding(tiny_words, tmp_path):
    model, data = tiny_model(tiny_words)
    with pytest.raises(ValueError, match="3 labels, layer 'embedding' has"):
        fit(model, data, [TensorBoard(tmp_path / "logs", embeddings_freq=1, embeddings_metadata=list("abc"))])
    with pytest.raises(ValueError, match="update_freq"):
        TensorBoard(tmp_path / "logs", update_freq=0)


@pytest.mark.parametrize("make, message", [
    (lambda: StepDecay(0.0), "initial_lr"),
    (lambda: StepDecay(0.1, factor=-1), "factor"),
    (lambda: StepDecay(0.1, milestones=[0]), "milestones"),
    (lambda: StepDecay(0.1, milestones=[2.5]), "milestones"),
    (lambda: CosineDecay(0.1, decay_steps=0), "decay_steps"),
    (lambda: CosineDecay(0.1, decay_steps=10, alpha=2), "alpha"),
])
def test_bad_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_train_with_cosine_and_plateau_logs_the_rate(tiny_names_file, tmp_path):
    config = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=8, steps=60, decay_at=[],
                    lr=0.1, schedule="cosine", plateau_patience=1, steps_per_call=5)
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", verbose=0,
                   log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    rates = [float(r["lr"]) for r in rows]
    assert len(rates) == result.metrics["epochs"] >= 2
    assert all(b < a for a, b in zip(rates, rates[1:]))
    assert rates[0] < 0.1


def test_loss_curve_with_a_file_carries_on_after_a_restart(tmp_path):
    x = np.random.default_rng(0).integers(0, 27, (64, 3)).astype("int32")
    y = np.random.default_rng(1).integers(0, 27, (64,)).astype("int32")

    def fit(epochs, curve):
        keras.utils.set_random_seed(0)
        model = compile_model(build_model(27, 3, 4, 8), make_optimizer("sgd", 0.1))
        model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[curve], verbose=0)

    whole = LossCurve()
    fit(2, whole)
    first = LossCurve(tmp_path / "curve.csv")
    fit(1, first)
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == "step,loss,lr"
    again = LossCurve(tmp_path / "curve.csv")
    fit(1, again)  # a restarted process: the points before it are read back, then new ones follow
    assert again.steps[:len(first.steps)] == first.steps and len(again.steps) == len(whole.steps)
    assert len((tmp_path / "curve.csv").read_text().splitlines()) == 1 + len(whole.steps)


def test_elapsed_time_logs_training_seconds_including_earlier_parts():
    clock = ElapsedTime(earlier=100.0)
    clock.on_train_begin()
    logs = {}
    clock.on_epoch_end(0, logs)
    assert 100.0 <= logs["seconds"] < 110.0


def test_step_timer_keeps_the_compiling_call_and_the_epochs_apart(tiny_words):
    model, data = tiny_model(tiny_words)
    timer = StepTimer()
    model.fit(data.dataset("train", 8, steps_per_call=5), steps_per_epoch=3, epochs=3, verbose=0,
              validation_data=data.dataset("dev", 64), callbacks=[timer], shuffle=False)
    assert (timer.first_steps, timer.steps) == (5, 30)  # 9 calls of 5 steps: 1 compiles, 2 start epochs
    assert timer.epoch_start_steps == [5, 5] and len(timer.epoch_starts) == 2 and len(timer.epoch_ends) == 3
    assert all(t > 0 for t in [timer.first_call, timer.seconds, *timer.epoch_starts, *timer.epoch_ends])
    assert timer.seconds_per_step == pytest.approx(timer.seconds / 30)
    extra = [start - 5 * timer.seconds_per_step for start in timer.epoch_starts]
    assert timer.seconds_per_epoch() == pytest.approx(np.mean(timer.epoch_ends[1:]) + np.mean(extra))
    stopper = StepTimer(min_seconds=0.0)  # stops once a call after the first is timed
    model.fit(data.dataset("train", 8, steps_per_call=5), steps_per_epoch=10, epochs=1, verbose=0,
              callbacks=[stopper], shuffle=False)
    assert (stopper.first_steps, stopper.steps) == (5, 5)


class FakeStream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


def fit_with_progress(tiny_words, stream, **kwargs):
    model, data = tiny_model(tiny_words)
    model.fit(data.dataset("train", 8, steps_per_call=5), steps_per_epoch=2, epochs=4, verbose=0,
              validation_data=data.dataset("dev", 64), shuffle=False,
              callbacks=[Progress(total_steps=40, stream=stream, **kwargs)])
    return stream.getvalue()


def test_progress_rewrites_one_line_on_a_terminal(tiny_words):
    out = fit_with_progress(tiny_words, FakeStream(terminal=True), refresh=0.0)
    assert out.endswith("\n") and out.count("\n") == 1  # one line, rewritten in place
    updates = out.rstrip("\n").split("\r")[1:]
    assert len(updates) >= 8 + 4  # after every call and every epoch (refresh=0)
    assert [u.split()[1] for u in updates[:2]] == ["5/40", "10/40"]  # counted in optimizer steps
    last = updates[-1]
    assert re.match(r"step 40/40  100%  \d+:\d\d elapsed  loss \d\.\d{4}  dev \d\.\d{4}$", last), last
    assert all(len(u) >= len(v.rstrip()) for u, v in zip(updates[1:], updates))  # blanks out longer ones
    assert "left" in updates[1] and "/step" not in out


def test_progress_writes_plain_lines_elsewhere(tiny_words):
    lines = fit_with_progress(tiny_words, FakeStream(terminal=False), every=0.0).splitlines()
    assert "\r" not in "".join(lines)
    assert [line.split()[1] for line in lines] == ["10/40", "20/40", "30/40", "40/40"]  # one per epoch
    assert all(" dev " in line for line in lines) and " left " in lines[1]
    rare = fit_with_progress(tiny_words, FakeStream(terminal=False), every=3600.0).splitlines()
    assert [line.split()[1] for line in rare] == ["10/40", "40/40"]  # then only when training ends


def test_progress_of_a_resumed_run_counts_from_where_it_is(tiny_words):
    model, data = tiny_model(tiny_words)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(30)  # as BackupAndRestore leaves it after 30 of 40 steps
    stream = FakeStream(terminal=False)
    model.fit(data.dataset("train", 8, steps_per_call=5), steps_per_epoch=2, epochs=1, verbose=0,
              shuffle=False, callbacks=[Progress(total_steps=40, stream=stream, earlier=125.0)])
    assert re.match(r"step 40/40  100%  2:0\d elapsed  loss", stream.getvalue()), stream.getvalue()
