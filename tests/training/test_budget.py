"""Time budgets (``kmlp train --minutes``, kmlp.training.budget): the plan, the deadline that ends a
run early when the machine gets busier, ``--stop-at``, and the configuration that repeats a run."""

import dataclasses
import json
import random

import keras
import numpy as np
import pytest
from conftest import TINY_WORDS

from kmlp.cli import main as cli
from kmlp.config import Config, load_config_file, preset
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError, RunError
from kmlp.models.mlp import build_model, compile_model
from kmlp.training import budget
from kmlp.training.budget import CALL_SHARE, RunCost, call_steps, deadline_for, plan_minutes, repeat_flags
from kmlp.training.callbacks.deadline import Deadline
from kmlp.training.callbacks.schedules import CosineDecay
from kmlp.training.callbacks.state import step_of
from kmlp.training.callbacks.stop_at import StopAt
from kmlp.training.setup import plan_training, prepare
from kmlp.training.train import train

QUIET = dict(verbose=0, log=lambda *_: None)
NAMES_LIKE = NamesData.from_words([f"w{i:05d}x" for i in range(20_000)])  # a pass: 4,000 steps at batch 32
# (early stopping, on by default for a list this small, off: these runs are about their planned steps)
TINY = dict(block_size=3, n_embd=4, n_hidden=16, batch_size=8, jit_compile=False, early_stopping=0)
# The same tiny model as flags (on the lecture's preset), for the command line's view of a run.
TINY_FLAGS = ["--preset", "lecture", "--n-embd", "4", "--n-hidden", "16", "--batch-size", "8", "--no-jit",
              "--optimizer", "adam", "--lr", "0.01", "--schedule", "cosine", "--decay-at", "none"]


def cost(**changes) -> RunCost:
    return RunCost(**{**dict(before=5.0, step=1e-4, evaluation=0.05, finish=2.0, compile=1.0, compiled=(250,)),
                      **changes})


# ---------------------------------------------------------------------------------------------
# The plan

@pytest.mark.parametrize("minutes, step, evaluation", [(1, 1e-4, 0.05), (0.5, 2e-5, 0.01), (3, 4e-2, 0.5),
                                                       (30, 3e-5, 0.3), (2, 1e-3, 2.0)])
def test_a_plan_fills_its_budget_with_evaluations_spread_as_usual(minutes, step, evaluation):
    config = Config(minutes=minutes, decay_at=[], schedule="cosine")
    measured = cost(step=step, evaluation=evaluation)
    plan = plan_training(plan_minutes(config, NAMES_LIKE, measured), NAMES_LIKE)
    budget_seconds = minutes * 60
    assert measured.seconds(plan) <= budget_seconds
    epoch = plan.steps_per_epoch * step + evaluation
    assert measured.seconds(plan) >= budget_seconds - 2 * epoch - 0.01 * budget_seconds  # nearly all of it
    per_call = plan.steps_per_call  # the most a call runs, or a call of at most 2% of the budget
    assert per_call == call_steps(config, step) and (per_call == 250 or per_call * step <= CALL_SHARE * budget_seconds)
    assert plan.steps % per_call == 0
    passes = plan.steps / NAMES_LIKE.steps_per_epoch(config.batch_size)
    aimed = max(1, min(200, plan.steps // per_call, round(passes)))  # one evaluation a pass, 200 at most
    assert aimed / 2 < plan.epochs <= aimed


@pytest.mark.parametrize("minutes", [0.3, 0.7, 0.9, 1.0])
def test_a_plan_of_an_odd_number_of_calls_over_a_few_passes_keeps_nearly_all_of_them(minutes):
    """With about two evaluations, 33 calls that fit are 32 (two epochs of 16), not 17 (one of 17)."""
    measured = cost(step=3e-3)
    plan = plan_training(plan_minutes(Config(minutes=minutes, decay_at=[]), NAMES_LIKE, measured), NAMES_LIKE)
    assert measured.seconds(plan) >= 0.9 * minutes * 60


def test_a_call_takes_a_small_share_of_the_budget_unless_its_steps_are_given():
    """The clock is read after every call: the default preset's calls of 250 steps took seconds each."""
    config = Config(minutes=1)
    assert call_steps(config, 1e-4) == 250  # the most a call runs
    assert call_steps(config, 0.07) == 17 and 17 * 0.07 <= CALL_SHARE * 60 < 18 * 0.07
    assert call_steps(config, 5.0) == 1
    assert call_steps(config.replace(steps_per_call=100), 0.07) == 100
    assert call_steps(config, 0.07, compiled=(5,)) == 5  # short enough, and compiled already
    assert call_steps(config, 0.07, compiled=(5, 25)) == 5 and call_steps(config, 0.07, compiled=(25,)) == 17


def test_milestones_keep_their_share_of_the_planned_steps():
    lecture = preset("lecture").replace(minutes=1)  # 200k steps, the rate cut at 100k
    planned = plan_minutes(lecture, NAMES_LIKE, cost())
    assert planned.steps != 200_000 and planned.decay_at == [round(planned.steps / 2 / 250) * 250]
    assert plan_training(planned, NAMES_LIKE).steps_per_call == 250
    assert repeat_flags(lecture, planned) == f"--steps {planned.steps} --decay-at {planned.decay_at[0]}"
    fast = preset("fast").replace(minutes=0.25)  # 1,200 steps, cut at 700 and 1,000
    planned = plan_minutes(fast, NAMES_LIKE, cost(step=1e-3))
    assert [round(m / planned.steps, 1) for m in planned.decay_at] == [0.6, 0.8]
    assert all(m % 250 == 0 for m in planned.decay_at) and planned.minutes == 0.25


def test_slow_steps_run_in_calls_of_a_few_and_a_budget_without_room_for_one_is_refused():
    config = Config(minutes=0.25, decay_at=[])
    slow = cost(step=0.04, evaluation=1.0, compiled=(7,))  # 2% of 15 s: 7 steps
    planned = plan_minutes(config, NAMES_LIKE, slow)
    assert planned.steps_per_call == 7 and planned.steps % 7 == 0
    assert slow.seconds(plan_training(planned, NAMES_LIKE)) <= 15
    assert repeat_flags(config, planned) == f"--steps {planned.steps} --steps-per-call 7"
    with pytest.raises(ConfigError, match=r"^--minutes 0.1 is too short for this run on this machine: .* "
                                          r"give at least --minutes 0.2$"):
        plan_minutes(config.replace(minutes=0.1), NAMES_LIKE, dataclasses.replace(slow, compiled=()))


def test_a_new_plan_forgets_where_an_earlier_run_stopped_and_stop_at_needs_steps_above_it():
    kept = Config(minutes=1, steps=3000, stop_at=1000, decay_at=[1500])  # as a cut run's backup keeps it
    planned = plan_minutes(kept, NAMES_LIKE, cost())
    assert planned.stop_at is None and repeat_flags(kept, planned).startswith(f"--steps {planned.steps} ")
    assert repeat_flags(kept, planned.replace(stop_at=500)).startswith(f"--steps {planned.steps} --stop-at 500")
    for wrong, message in ((dict(steps=1000), "--stop-at ends a run of --steps before its last step, so it must "
                                              "be below them; got 1000 with --steps 1000"),
                           (dict(steps=None, epochs=3), "got 1000 with --epochs 3"),
                           (dict(stop_at=0), "--stop-at must be a positive integer, got 0")):
        with pytest.raises(ConfigError, match=message):
            Config(steps=2000, stop_at=1000).replace(**wrong)


# ---------------------------------------------------------------------------------------------
# Ending early: StopAt and Deadline on a plain fit

def tiny_fit(callbacks, calls=20, steps_per_call=5, epochs=1):
    data = NamesData.from_words(TINY_WORDS, block_size=3)
    model = build_model(len(data.vocab), block_size=3, n_embd=4, n_hidden=16, seed=0)
    compile_model(model, keras.optimizers.SGD(0.1), jit_compile=False)
    model.fit(data.dataset("train", 8, steps_per_call=steps_per_call), steps_per_epoch=calls, epochs=epochs,
              callbacks=callbacks, verbose=0, shuffle=False)
    return step_of(model.optimizer)


def test_stop_at_ends_at_the_end_of_the_call_that_reaches_it():
    assert tiny_fit([StopAt(23)], calls=10, epochs=2) == 25


class Machine(keras.callbacks.Callback):
    """Synthetic time, as a machine of known speed makes it pass: each call takes ``step`` seconds per
    optimizer step and each epoch's end ``evaluation`` seconds, both times ``slowdown(now)``. It is
    the clock a :class:`Deadline` reads (put it before the deadline)."""

    def __init__(self, now: float, step: float, evaluation: float, slowdown):
        super().__init__()
        self.now, self.step, self.evaluation, self.slowdown = now, step, evaluation, slowdown

    def __call__(self) -> float:
        return self.now

    def on_train_batch_begin(self, batch, logs=None):
        self._step = step_of(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        self.now += (step_of(self.model.optimizer) - self._step) * self.step * self.slowdown(self.now)

    def on_epoch_end(self, epoch, logs=None):
        self.now += self.evaluation * self.slowdown(self.now)


def busy_from(seconds: float, factor: float):
    return lambda now: factor if now >= seconds else 1.0


@pytest.mark.parametrize("slowdown, cut", [
    (lambda now: 1.0, False),                            # as measured: the plan holds
    (busy_from(30, 2.0), True),                          # two busy processes from half-way, on two cores
    (busy_from(10, 3.0), True),                          # busier, sooner
    (lambda now, noise=random.Random(0): noise.choice((0.5, 1.5)), None),  # unevenly, as measured on average
], ids=["quiet", "twice-as-slow-from-half-way", "three-times-from-10-s", "uneven"])
def test_a_budget_ends_within_15_percent_of_it_when_the_machine_gets_busier(monkeypatch, slowdown, cut):
    """A 60 s budget measured at 5 s to start, 0.25 s a step, 1 s an evaluation and 4 s to finish, run
    on synthetic time: the deadline ends it early, at a call boundary, once going on (the evaluations
    and the finish included) would end late, and a run going as measured ends as planned."""
    request, measured = Config(**TINY, minutes=1, decay_at=[]), cost(step=0.25, evaluation=1.0, finish=4.0,
                                                                    compiled=())
    data = NamesData.from_words(TINY_WORDS, block_size=3)
    setup = prepare(plan_minutes(request, data, measured), data, log=lambda *_: None)
    assert setup.plan.steps_per_call == 4 and measured.seconds(setup.plan) <= 60  # calls of 2% of the budget

    def run(deadline: bool) -> tuple[float, Deadline]:
        machine = Machine(measured.before, measured.step, measured.evaluation, slowdown)
        monkeypatch.setattr(Deadline, "clock", staticmethod(machine))
        ends = deadline_for(request, measured, started=0.0)
        setup.model.optimizer.iterations.assign(0)
        setup.fit([machine, *([ends] if deadline else [])])
        return machine.now + measured.finish * slowdown(machine.now), ends

    took, ends = run(deadline=True)
    assert took <= 60 * 1.15 and cut in (None, ends.stopped_at is not None)
    if cut:
        assert ends.stopped_at % 4 == 0 and run(deadline=False)[0] > 60 * 1.15  # without it: late
    else:
        assert took >= 0.9 * 60


@pytest.mark.parametrize("finish, evaluation, stopped_at", [(0.0, 0.0, 70), (100.0, 0.0, 60), (0.0, 100.0, 60)],
                         ids=["nothing-after-training", "a-long-finish", "long-evaluations"])
def test_a_deadline_counts_the_evaluation_and_finish_that_stopping_still_costs(monkeypatch, finish, evaluation,
                                                                               stopped_at):
    """Steps measured at 10 s, calls of 5 (50 s), a deadline at 1,200 s; from 500 s on every call takes
    three times as long. Going on commits to the next call and what stopping after it costs, 3 x (50 +
    evaluation + finish): with nothing after training the run goes on to step 70 (1,100 + 150 s is
    late); 100 s to evaluate or to finish end it at step 60 (800 + 450 s is late)."""
    machine = Machine(0.0, 10.0, 0.0, busy_from(500, 3.0))
    monkeypatch.setattr(Deadline, "clock", staticmethod(machine))
    stops = []
    deadline = Deadline(1200, seconds_per_step=10.0, seconds_per_evaluation=evaluation, seconds_to_finish=finish,
                        window=50, on_stop=lambda *a: stops.append(a))
    assert tiny_fit([machine, deadline]) == stopped_at == deadline.stopped_at
    assert len(stops) == 1 and stops[0] == (stopped_at, pytest.approx(3.0))


# ---------------------------------------------------------------------------------------------
# Whole runs: what they record, and the runs that repeat them

def planned_for_1000_steps(config, data, cost, chunk=250):
    """A plan that does not depend on how fast the machine is today (what the tests are not about)."""
    return budget._scaled(config, 1000, chunk)


class InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def config_of(*flags) -> Config:
    return cli.train_config_from_args(cli.build_parser().parse_args(["train", *map(str, flags)]))


def assert_same_weights(a, b):
    for x, y in zip(a.model.variables, b.model.variables, strict=True):  # weights, statistics, seeds
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert a.metrics["dev_loss"] == b.metrics["dev_loss"] and a.metrics["steps"] == b.metrics["steps"]


@pytest.mark.parametrize("recipe, measure", [
    (dict(n_layers=2, norm="batch", dropout=0.1, rdrop=0.5, optimizer="adamw", weight_decay=0.1, lr=1e-2,
          schedule="cosine", decay_at=[]), budget.measure_cost),
    (dict(optimizer="sgd", lr=0.2, steps=4000, decay_at=[2000]), lambda *args, **kwargs: cost()),
    (dict(arch="hierarchical", block_size=4, n_layers=2, norm="batch", init="fan_in", norm_momentum=0.9,
          norm_epsilon=1e-5, optimizer="sgd", lr=0.2, steps=4000, decay_at=[2000]), budget.measure_cost),
], ids=["adamw-batchnorm-rdrop-cosine-measured", "sgd-step-decay", "hierarchical-part5-recipe-measured"])
def test_a_minutes_run_is_exactly_the_run_its_config_json_repeats(recipe, measure, tiny_names_file, tmp_path,
                                                                  monkeypatch):
    """The measuring trains the model, then puts everything back: the run is the one its steps give."""
    measured = []
    monkeypatch.setattr(budget, "measure_cost", lambda *a, **k: measured.append(measure(*a, **k)) or measured[-1])
    monkeypatch.setattr(budget, "plan_minutes", planned_for_1000_steps)
    timed = train(Config(**{**TINY, "minutes": 5, **recipe}), data_path=tiny_names_file, out_dir=tmp_path / "timed",
                  **QUIET)
    assert len(measured) == 1 and measured[0].step > 0
    recorded = timed.metrics["budget"]
    assert recorded["repeat_with"] == ("--steps 1000" + (" --decay-at 500" if recipe["decay_at"] else ""))
    assert recorded["minutes"] == 5 and recorded["planned_steps"] == 1000 and "stopped_at" not in recorded
    as_ran = load_config_file(timed.out_dir / "config.json")
    assert as_ran == timed.config and as_ran.minutes is None and as_ran.steps == 1000
    repeated = train(config_of("--config", timed.out_dir / "config.json"), data_path=tiny_names_file,
                     out_dir=tmp_path / "steps", **QUIET)
    assert_same_weights(timed, repeated)
    for key in ("loss", "val_loss", "lr"):  # every epoch's figures but the time
        assert timed.history[key] == repeated.history[key], key
    plan = plan_training(timed.config, timed.data)
    if recipe["decay_at"]:  # the cut moved with the run: from step 2,000 of 4,000 to 500 of 1,000
        rates = [(plan.steps_per_epoch * (e + 1), lr) for e, lr in enumerate(timed.history["lr"])]
        before, after = [lr for end, lr in rates if end <= 500], [lr for end, lr in rates if end > 500]
        assert before == pytest.approx([0.2] * len(before)) and after == pytest.approx([0.02] * len(after))
        assert before and after
    else:  # the cosine spans the 1,000 steps planned, not the preset's 200,000
        for epoch, rate in enumerate(timed.history["lr"]):
            expected = CosineDecay(1e-2, 1000).rate_at((epoch + 1) * plan.steps_per_epoch - plan.steps_per_call)
            assert rate == pytest.approx(expected, rel=1e-5, abs=1e-7)


class Later(keras.callbacks.Callback):
    """Makes every call after optimizer step ``after`` seem to the deadline to take ``seconds`` more."""

    def __init__(self, monkeypatch, after: int, seconds: float):
        super().__init__()
        self.after, self.seconds, self.extra = after, seconds, 0.0
        real = Deadline.clock
        monkeypatch.setattr(Deadline, "clock", staticmethod(lambda: real() + self.extra))

    def on_train_batch_end(self, batch, logs=None):
        self.extra += self.seconds * (step_of(self.model.optimizer) > self.after)


@pytest.mark.parametrize("interrupted", [False, True], ids=["whole", "interrupted-once-cut"])
def test_a_minutes_run_cut_short_is_exactly_the_run_its_record_repeats(interrupted, tiny_names_file, tmp_path,
                                                                       monkeypatch):
    """After step 80 every call seems to take 1,000 s more: the run planned for 200 steps in calls of
    10 ends at step 90 (the first slow call, in the middle of an epoch of 20 steps), its cosine still
    the one planned for 200 steps. Its config.json, and its flags with --minutes replaced by the recorded
    ones, are that run. Interrupted once the epoch it ended in is backed up, it resumes as the run it
    became, with nothing left to train."""
    monkeypatch.setattr(budget, "measure_cost", lambda *args, **kwargs: cost())
    monkeypatch.setattr(budget, "plan_minutes", lambda config, *_: budget._scaled(config, 200, 10))
    config = config_of(*TINY_FLAGS, "--minutes", 5)
    said, slower = [], Later(monkeypatch, after=80, seconds=1000)
    run = dict(data_path=tiny_names_file, out_dir=tmp_path / "timed", verbose=0)
    if interrupted:  # step 90 is in the 5th epoch
        with pytest.raises(KeyboardInterrupt):
            train(config, callbacks=[slower, InterruptAfter(4)], log=said.append, **run)
        timed = train(config, resume=True, log=said.append, **run)
        assert "resuming a --minutes 5 run: it keeps the 200 steps it planned and ends at step 90, where it " \
               "fell behind" in said and timed.metrics["resumed_at_step"] == 90
    else:
        timed = train(config, callbacks=[slower], log=said.append, **run)
    assert any(line.startswith("fell behind the plan: the last calls took ") and
               line.endswith("the run ends at step 90 of 200 to end within 300 s (--steps 200 --stop-at 90 "
                             "--steps-per-call 10 in place of --minutes repeats it)") for line in said), said
    recorded = timed.metrics["budget"]
    assert timed.metrics["steps"] == recorded["stopped_at"] == 90 and recorded["planned_steps"] == 200
    assert recorded["repeat_with"] == "--steps 200 --stop-at 90 --steps-per-call 10"
    assert timed.config == config.replace(minutes=None, steps=200, stop_at=90, steps_per_call=10)
    assert config_of(*TINY_FLAGS, *recorded["repeat_with"].split()) == timed.config
    assert config_of("--config", timed.out_dir / "config.json") == timed.config
    repeated = train(timed.config, data_path=tiny_names_file, out_dir=tmp_path / "steps", **QUIET)
    assert_same_weights(timed, repeated)
    if not interrupted:
        for key in ("loss", "val_loss", "lr"):  # every epoch's figures but the time, the last one cut short
            assert timed.history[key] == repeated.history[key], key
        assert len(timed.history["lr"]) == timed.metrics["epochs"] == 5
        assert timed.history["lr"][-1] == pytest.approx(CosineDecay(1e-2, 200).rate_at(80), rel=1e-5)


def test_a_resumed_minutes_run_keeps_the_steps_it_planned(tiny_names_file, tmp_path, monkeypatch):
    config = Config(**TINY, minutes=5, decay_at=[], optimizer="adam", lr=1e-2)
    monkeypatch.setattr(budget, "measure_cost", lambda *args, **kwargs: cost())
    monkeypatch.setattr(budget, "plan_minutes", planned_for_1000_steps)
    with pytest.raises(KeyboardInterrupt):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", callbacks=[InterruptAfter(1)], **QUIET)

    def measure_again(*args, **kwargs):
        raise AssertionError("a resumed run measured the machine again")

    monkeypatch.setattr(budget, "measure_cost", measure_again)
    said = []
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", resume=True, verbose=0,
                   log=said.append)
    assert "resuming a --minutes 5 run: it keeps the 1,000 steps it planned" in said
    assert result.metrics["steps"] == 1000 and result.metrics["resumed_at_step"] == 500
    assert result.metrics["budget"] == {"minutes": 5, "planned_steps": 1000, "repeat_with": "--steps 1000"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["minutes"] is None


def test_a_budgeted_fine_tuning_takes_the_rate_of_the_passes_it_planned_and_keeps_it_on_resume(
        tiny_run_dir, tiny_names_file, tmp_path, monkeypatch):
    from kmlp.runs.start import start_from

    def eight_passes(config, data, cost):
        return budget._scaled(config, 8 * data.steps_per_epoch(config.batch_size), config.steps_per_call)

    monkeypatch.setattr(budget, "plan_minutes", eight_passes)
    monkeypatch.setattr(budget, "measure_cost", lambda *args, **kwargs: cost())
    config = start_from(tiny_run_dir, minutes=5, batch_size=8, early_stopping=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", callbacks=[InterruptAfter(2)], **QUIET)
    said = []
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", resume=True, verbose=0,
                   log=said.append)
    assert any(line.startswith("resuming a --minutes 5 run: it keeps the") for line in said)
    assert len(result.history["val_loss"]) + 3 == 8  # a pass an evaluation; 3 done before the cut
    assert result.config.lr == pytest.approx(config.lr_passes / 8)
    assert f"rate: --lr {config.lr_passes / 8:.3g}, that is --lr-passes 0.03 over 8 passes over the train split" in said


def test_resuming_with_another_budget_is_another_run(tiny_names_file, tmp_path, monkeypatch):
    config = Config(**TINY, minutes=5, decay_at=[], optimizer="adam", lr=1e-2)
    monkeypatch.setattr(budget, "plan_minutes", planned_for_1000_steps)
    monkeypatch.setattr(budget, "measure_cost", lambda *args, **kwargs: cost())
    with pytest.raises(KeyboardInterrupt):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", callbacks=[InterruptAfter(0)], **QUIET)
    with pytest.raises(RunError, match=r"another run \(options minutes differ\)"):
        train(config.replace(minutes=6), data_path=tiny_names_file, out_dir=tmp_path / "run", resume=True,
              **QUIET)
