"""kmlp.training.backup: the backup of a training in progress, what a kill leaves, and what may resume it."""

import hashlib
import json
import os

import keras
import pytest
from conftest import TINY_WORDS, copy_run
from test_budget import InterruptAfter  # Ctrl-C once the backup has recorded an epoch

from kmlp.config import Config
from kmlp.data.pipeline import NamesData
from kmlp.errors import RunError
from kmlp.runs.start import start_from
from kmlp.training import backup as backups
from kmlp.training.setup import Plan
from kmlp.training.train import train

PLAN = {"steps": 40, "steps_per_call": 5, "calls_per_epoch": 2, "epochs": 4}


def left_over(tmp_path, metadata: str, previous: str | None = None, identity=None):
    """A backup folder as a killed training leaves it."""
    backup = backups.backup_dir(tmp_path / "run")
    backup.mkdir()
    (backup / backups.WEIGHTS_FILE).write_bytes(b"new")
    (backup / backups.METADATA_FILE).write_text(metadata)
    if previous is not None:
        (backup / f"{backups.WEIGHTS_FILE}.bkp").write_bytes(b"old")
        (backup / f"{backups.METADATA_FILE}.bkp").write_text(previous)
    if identity is not None:
        (backup / backups.IDENTITY_FILE).write_text(json.dumps(identity))
    return backup


def identity(**changes):
    return {"config": Config(**changes).to_dict(), "plan": PLAN, "data": "/names.txt", "data_sha256": "ab"}


def test_a_save_killed_while_writing_metadata_falls_back_to_the_previous_epoch(tmp_path):
    backup = left_over(tmp_path, metadata="", previous='{"epoch": 3, "batch": -1}')
    assert backups.repair(backup) == 3
    assert backups.epoch_of(backup / backups.METADATA_FILE) == 3
    assert (backup / backups.WEIGHTS_FILE).read_bytes() == b"old"  # weights and epoch agree


def test_a_first_save_killed_while_writing_metadata_starts_over(tmp_path):
    backup = left_over(tmp_path, metadata='{"epo')
    assert backups.repair(backup) is None
    assert not (backup / backups.METADATA_FILE).exists()  # as if no epoch had finished


def test_a_complete_backup_is_left_as_it_is(tmp_path):
    backup = left_over(tmp_path, metadata='{"epoch": 4, "batch": -1}', previous='{"epoch": 3, "batch": -1}')
    assert backups.repair(backup) == 4
    assert (backup / backups.WEIGHTS_FILE).read_bytes() == b"new"


def test_a_left_over_backup_needs_resume_and_the_same_run(tmp_path):
    backup = left_over(tmp_path, metadata='{"epoch": 1, "batch": 0}', identity=identity(lr=0.5))
    with pytest.raises(RunError, match="pass --resume"):
        backups.Backup(tmp_path / "run").start(False, identity(), log=lambda *_: None)
    with pytest.raises(RunError, match="another run .options lr differ"):
        backups.Backup(tmp_path / "run").start(True, identity(), log=lambda *_: None)
    other_data = {**identity(lr=0.5), "data_sha256": "cd"}
    with pytest.raises(RunError, match="the names file differs"):
        backups.Backup(tmp_path / "run").start(True, other_data, log=lambda *_: None)
    assert backup.is_dir()


def test_resuming_drops_what_was_written_after_the_saved_epoch(tmp_path):
    backup = left_over(tmp_path, metadata='{"epoch": 2, "batch": -1}', identity=identity())
    (backup / "history.csv").write_text("epoch,loss,seconds\n0,3.0,1.5\n1,2.5,3.0\n2,2.4,4.5\n")
    (backup / "curve.csv").write_text("step,loss,lr\n5,3.1,0.1\n10,2.9,0.1\n15,2.6,0.1\n20,2.5,0.1\n25,2.4,0.1\n")
    kept = backups.Backup(tmp_path / "run")
    assert kept.start(True, identity(), log=lambda *_: None) == 2
    assert (backup / "history.csv").read_text().splitlines()[-1] == "1,2.5,3.0"
    assert [r.split(",")[0] for r in (backup / "curve.csv").read_text().splitlines()] == ["step", "5", "10", "15", "20"]
    assert kept.seconds_done() == 3.0


def test_nothing_to_resume_starts_afresh(tmp_path):
    said = []
    assert backups.Backup(tmp_path / "run").start(True, identity(), log=said.append) == 0
    assert "nothing to resume" in said[0]
    assert json.loads((backups.backup_dir(tmp_path / "run") / "run.json").read_text()) == identity()


def test_a_backup_knows_its_names_by_the_hash_of_the_bytes_read():
    raw = ("\n".join(TINY_WORDS) + "\n").encode()
    read_end, write_end = os.pipe()
    os.write(write_end, raw)
    os.close(write_end)
    try:
        data = NamesData.from_file(f"/dev/fd/{read_end}")  # a pipe: a second reading would find nothing
    finally:
        os.close(read_end)
    config, plan = Config(), Plan(**PLAN)
    expected = backups.identity(config, data, plan)
    assert expected["data"] == f"/dev/fd/{read_end}" and expected["data_sha256"] == hashlib.sha256(raw).hexdigest()
    from_list = backups.identity(config, NamesData.from_words(TINY_WORDS), plan)  # no file: the train split's
    assert from_list["data"] is None and from_list["train_sha256"] == data.digest("train")
def test_a_fine_tuning_resumes_only_from_the_same_weights_of_its_start_run(tiny_run_dir, tiny_names_file, tmp_path):
    start = copy_run(tiny_run_dir, tmp_path / "start")
    config = start_from(start, steps=40, steps_per_call=10, early_stopping=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "out", verbose=0, log=lambda *_: None,
              callbacks=[InterruptAfter(0)])
    kept = json.loads((backups.backup_dir(tmp_path / "out") / backups.IDENTITY_FILE).read_text())
    assert kept["started_from"]["run"] == str(start.resolve()) and len(kept["started_from"]["weights_sha256"]) == 64
    model = keras.saving.load_model(start / "model.keras")
    model.get_layer("logits").bias.assign(model.get_layer("logits").bias + 0.5)
    model.save(start / "model.keras")  # the start run's weights changed since the interruption
    with pytest.raises(RunError, match="another run .the weights of the run --from starts from differ"):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "out", resume=True, verbose=0, log=lambda *_: None)
    assert backups.backup_dir(tmp_path / "out").is_dir()  # kept for a resume from the right weights
