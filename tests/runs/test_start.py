"""kmlp.runs.start: a training that starts from a trained run, its configuration, data and model."""

import hashlib
import json

import pytest

from kmlp.config import Config, Naming, load_config_file
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError
from kmlp.runs import start
from kmlp.runs.rundir import load_run

QUIET = dict(verbose=0, log=lambda *_: None)
# A list with characters the tiny run never saw (its vocabulary is TINY_WORDS' letters).
NEW_WORDS = ["zoë", "józef", "łucja", "émile", "renée", "chloé", "anaïs", "noël", "maëlle", "josé", "andré",
             "zoé", "amélie", "hélène", "céline", "léa", "inès", "jérôme", "françois", "gaëlle"]


def every_file(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_architecture_comes_from_the_run_and_an_explicit_contradiction_is_refused(tiny_run_dir):
    run = str(tiny_run_dir)  # block_size 3, n_embd 4, n_hidden 16, one layer, no norm
    preset_values = {**Config(n_hidden=512, n_layers=3, norm="batch", lr=6e-3).to_dict(), "start_from": run}
    values = start.start_values(preset_values, explicit={"start_from"})  # a preset's values never count
    assert (values["n_hidden"], values["n_layers"], values["norm"]) == (16, 1, "none")
    assert (values["lr_passes"], values["epochs"], values["steps"], values["minutes"]) == \
        (start.FINE_TUNING["lr_passes"], start.FINE_TUNING["epochs"], None, None)
    assert values["lr"] == start.FINE_TUNING["lr_passes"] / start.FINE_TUNING["epochs"]  # until planned
    with pytest.raises(ConfigError, match=f"^--n-hidden 300 contradicts --from {run}'s n_hidden 16$"):
        start.start_values({**preset_values, "n_hidden": 300}, explicit={"n_hidden"})
    given = start.start_values({**preset_values, "n_hidden": 16, "lr": 0.5, "minutes": 2.0, "steps": None},
                               explicit={"n_hidden", "lr", "minutes"})
    assert (given["lr"], given["lr_passes"], given["minutes"], given["steps"]) == (0.5, None, 2.0, None)  # a budget still applies
    in_a_file = Naming(file="fine.json", keys={"block_size", "start_from"})
    with pytest.raises(ConfigError, match=f"^fine.json: block_size 5 contradicts start_from {run}'s block_size 3$"):
        start.start_values({**preset_values, "block_size": 5}, explicit={"block_size"}, naming=in_a_file)


def test_a_config_file_and_the_python_api_start_from_a_run(tiny_run_dir, tmp_path):
    config = start.start_from(tiny_run_dir, lr=0.02)
    assert (config.n_hidden, config.lr, config.start_from) == (16, 0.02, str(tiny_run_dir))
    file = tmp_path / "fine.json"
    file.write_text(json.dumps({"start_from": str(tiny_run_dir), "steps": 50}))
    from_file = load_config_file(file)
    assert from_file.start_from == str(tiny_run_dir) and from_file.steps == 50
    with pytest.raises(ConfigError, match="--n-embd 10 contradicts --from .*'s n_embd 4"):
        start.check_architecture(Config(start_from=str(tiny_run_dir), n_hidden=16))  # made by hand


def test_the_data_takes_the_runs_vocabulary_then_its_new_characters(tiny_run_dir):
    run = load_run(tiny_run_dir)
    data = NamesData.from_words(NEW_WORDS, block_size=3)
    extended = start.extend_data(data, run.vocab)
    assert extended.vocab.chars[:len(run.vocab.chars)] == run.vocab.chars
    assert "".join(extended.vocab.chars[len(run.vocab.chars):]) == "jçèéëïóôł"
    for split in ("train", "dev", "test"):
        assert list(extended.words[split]) == list(data.words[split])  # the same names, renumbered


def test_a_training_may_not_write_into_the_run_it_starts_from(tiny_run_dir):
    for out in (tiny_run_dir, tiny_run_dir / "inside"):
        with pytest.raises(ConfigError, match="the run --from .* starts from, which is only ever read"):
            start.check_out_dir(out, str(tiny_run_dir))
    start.check_out_dir(tiny_run_dir.parent / "elsewhere", str(tiny_run_dir))


@pytest.mark.parametrize("arch", ["mlp", "hierarchical"])
def test_fine_tuning_leaves_the_run_as_it_was_records_it_and_is_a_start_itself(arch, request, tmp_path):
    from kmlp.models.extend import weights_sha256
    from kmlp.training.train import train

    tiny_run_dir = request.getfixturevalue("tiny_run_dir" if arch == "mlp" else "hierarchical_run_dir")
    before = every_file(tiny_run_dir)
    words = tmp_path / "new.txt"
    words.write_text("\n".join(NEW_WORDS) + "\n", encoding="utf-8")
    config = start.start_from(tiny_run_dir, steps=40, steps_per_call=10)
    first = train(config, data_path=words, out_dir=tmp_path / "first", **QUIET)
    def shape(config):
        return {key: getattr(config, key) for key in start.ARCHITECTURE}

    assert first.config.arch == arch and shape(first.config) == shape(load_run(tiny_run_dir).config)
    assert every_file(tiny_run_dir) == before  # no file of RUN changed
    info = json.loads((tmp_path / "first" / "config.json").read_text(encoding="utf-8"))
    assert info["started_from"] == {"run": str(tiny_run_dir.resolve()), "new_characters": "jçèéëïóôł",
                                    "weights_sha256": weights_sha256(load_run(tiny_run_dir).model)}
    assert info["config"]["start_from"] == str(tiny_run_dir) and first.metrics["early_stopping"]
    # A run trained with --from is a start too; its vocabulary already holds every character.
    again = train(start.start_from(tmp_path / "first", steps=20, steps_per_call=10), data_path=words,
                  out_dir=tmp_path / "second", **QUIET)
    assert again.data.vocab == first.data.vocab
    assert json.loads((tmp_path / "second" / "config.json").read_text())["started_from"]["new_characters"] == ""


def test_fine_tuning_evaluates_once_a_pass_at_the_rate_for_its_length(tiny_run_dir, tmp_path):
    from kmlp.training.setup import RATE_MIN_PASSES
    from kmlp.training.train import train

    words = tmp_path / "new.txt"
    words.write_text("\n".join(NEW_WORDS) + "\n", encoding="utf-8")
    for passes in (RATE_MIN_PASSES + 1, RATE_MIN_PASSES - 2):
        config = start.start_from(tiny_run_dir, epochs=passes, batch_size=8, early_stopping=0)
        result = train(config, data_path=words, out_dir=tmp_path / f"{passes}", **QUIET)
        per_pass = result.data.steps_per_epoch(8)
        assert per_pass >= start.MIN_PASS_CALL and result.config.steps_per_call == per_pass  # a call, a pass
        assert len(result.history["val_loss"]) == passes and result.metrics["steps"] == passes * per_pass
        rate = start.FINE_TUNING["lr_passes"] / max(passes, RATE_MIN_PASSES)
        assert result.config.lr == pytest.approx(rate) and result.history["lr"][0] == pytest.approx(rate, rel=1e-3)
    given = start.start_from(tiny_run_dir, epochs=2, lr=0.02, batch_size=8)
    assert given.lr_passes is None and train(given, data_path=words, out_dir=tmp_path / "given", **QUIET).config.lr == 0.02


def test_a_call_is_a_pass_unless_a_pass_is_short_or_the_steps_are_given(tiny_run_dir):
    by_passes = start.start_from(tiny_run_dir)
    assert [start.pass_calls(by_passes, steps, 250).steps_per_call for steps in (3, 12, 178, 500, 503)] == \
        [start.MIN_PASS_CALL, 12, 178, 250, 250]  # (503 is prime: no divisor)
    assert start.pass_calls(start.start_from(tiny_run_dir, minutes=2), 12, 250).steps_per_call == 12
    for config in (start.start_from(tiny_run_dir, steps=100), start.start_from(tiny_run_dir, steps_per_call=7),
                   Config(epochs=3)):
        assert start.pass_calls(config, 12, 250) == config
