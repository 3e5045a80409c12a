"""saved_models/names-base: the names run the repository ships, loaded as it is (never trained here)."""

import pytest
from conftest import ROOT, run_cli

from kmlp.config import PRESETS
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
