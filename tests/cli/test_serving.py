"""kmlp.cli.serving: export writes beside a user's file, and retraining keeps the exports."""

import shutil

import pytest
from cli_helpers import TINY_MODEL, main

from kmlp.runs import rundir


@pytest.fixture(scope="module")
def tiny_run(tiny_run_dir):
    return tiny_run_dir


def test_export_and_evaluate_work_beside_a_users_file_and_retraining_keeps_the_exports(tiny_run, tmp_path,
                                                                                      capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    for command in (["export", out], ["evaluate", out, "--split", "test"]):
        code, _, err = main(capsys, *command)
        assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    served = (out / "export" / "1" / "saved_model.pb").read_bytes()
    code, _, err = main(capsys, "train", "--data", rundir.read_json(out / "config.json")["data"], "--out", out,
                        *TINY_MODEL, "--quiet", "--samples", "0")
    assert code == 0, err
    assert (out / "export" / "1" / "saved_model.pb").read_bytes() == served
    assert rundir.read_json(out / "metrics.json")["steps"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, backup or old run left
