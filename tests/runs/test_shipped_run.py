"""saved_models/names-base: the names run the repository ships, loaded as it is (never trained here)."""

import json

import pytest
from conftest import ROOT, copy_run, run_cli

from kmlp.cli import main as cli
from kmlp.config import PRESETS
from kmlp.data.fetch import NAMES_SHA256, file_sha256
from kmlp.data.pipeline import NamesData
from kmlp.runs.rundir import default_run_dir, load_run

SHIPPED = ROOT / "saved_models" / "names-base"


def test_it_loads_in_safe_mode_and_its_recorded_dev_loss_is_its_own(names_path):
    from kmlp.training.setup import EVAL_BATCH, evaluate_loss

    run = load_run(SHIPPED)  # safe_mode: no code in the archive runs
    assert run.metrics["dev_loss"] == pytest.approx(1.9823, abs=5e-5)
    data = NamesData.for_config(names_path, run.config, vocab=run.vocab)
    assert evaluate_loss(run.model, data.dataset("dev", EVAL_BATCH)) == pytest.approx(run.metrics["dev_loss"], abs=1e-5)
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 4 * 2**20  # a few MB


def test_no_preset_writes_over_it():
    for name in [*PRESETS, "custom"]:
        assert (ROOT / default_run_dir(name)).resolve() != SHIPPED.resolve()


def test_it_samples_names_at_once_as_a_command(tmp_path):
    done = run_cli("sample", SHIPPED, "-n", "5", "--seed", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = done.stdout.splitlines()[:5]
    assert len(names) == 5 and all(name.split()[0].isalpha() for name in names)


def test_a_copy_trained_on_another_machine_marks_names_against_the_verified_names_txt(names_path, tmp_path, capsys):
    copy = copy_run(SHIPPED, tmp_path / "names-base")
    info = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    assert info["data_sha256"] == NAMES_SHA256
    info["data"] = str(tmp_path / "another-machine" / "names.txt")  # as on a fresh clone elsewhere
    (copy / "config.json").write_text(json.dumps(info), encoding="utf-8")
    run = load_run(copy)
    assert file_sha256(run.data_path) == NAMES_SHA256
    splits, unavailable = run.splits()
    assert unavailable is None
    assert splits["dev"] == NamesData.for_config(names_path, run.config, vocab=run.vocab).words["dev"]
    capsys.readouterr()
    assert cli.main(["sample", str(copy), "-n", "5", "--new", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    assert "unavailable" not in err and "new: 5 of 5 (100%); copies of the run's list: 0" in out, out + err
