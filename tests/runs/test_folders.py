"""kmlp.runs: where a run may be written, the lock, publishing (exports kept), permissions, reading back."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import pytest
from conftest import ROOT, copy_run

from kmlp.errors import RunError
from kmlp.runs import folders, lock, manifest, rundir
from kmlp.runs.folders import check_out_dir, publish
from kmlp.runs.lock import RunLock
from kmlp.runs.rundir import load_run
from kmlp.utils import atomic


def add_version(run, graph: bytes, version: str = "1"):
    staging = run.parent / f".{version}.partial"
    staging.mkdir()
    (staging / "saved_model.pb").write_bytes(graph)
    manifest.add(run, manifest.entries_of(staging, f"export/{version}"))
    (run / "export").mkdir(exist_ok=True)
    staging.rename(run / "export" / version)


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Where a run may be written


def test_a_new_an_empty_and_an_earlier_run_folder_are_accepted(tiny_run_dir, tmp_path):
    assert check_out_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    run = copy_run(tiny_run_dir, tmp_path / "run")
    check_out_dir(run)
    add_version(run, b"graph")  # as kmlp export records it
    check_out_dir(run)


@pytest.mark.parametrize("case", ["user folder", "run with a user file", "file", "symlink"])
def test_what_kmlp_did_not_write_is_refused(case, tiny_run_dir, tmp_path):
    target = tmp_path / "out"
    if case == "user folder":
        target.mkdir()
        (target / "thesis.txt").write_text("years of work")
        needle = "thesis.txt"
    elif case == "run with a user file":
        copy_run(tiny_run_dir, target)
        (target / "notes.txt").write_text("mine")
        needle = "notes.txt"
    elif case == "file":
        target.write_text("a file")
        needle = "is a file"
    else:
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
        needle = "symbolic link"
    before = tree(tmp_path)
    with pytest.raises(RunError, match=needle):
        check_out_dir(target)
    assert tree(tmp_path) == before


def test_the_current_folder_and_its_parents_are_refused(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (".", "..", str(tmp_path / "work")):
        with pytest.raises(RunError, match="current folder"):
            check_out_dir(out)


def test_a_read_only_file_system_is_refused(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(folders.tempfile, "mkstemp", read_only)
    with pytest.raises(RunError, match="cannot write there .Read-only file system"):
        check_out_dir(tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# One process at a time

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from kmlp.runs.lock import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_second_process_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=rf"in use by another kmlp process \(pid {holder.pid}, since "):
            with RunLock(out):
                pass
    finally:
        holder.kill()  # as kill -9 would: the lock file stays behind
        holder.wait(timeout=30)
    assert (tmp_path / ".run.lock").exists()
    with RunLock(out):  # the OS released the dead process's lock
        assert json.loads((tmp_path / ".run.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".run.lock").exists()


# ---------------------------------------------------------------------------------------------
# Publishing


def test_retraining_keeps_the_exported_versions_and_replaces_the_rest(tiny_run_dir, tmp_path):
    out = copy_run(tiny_run_dir, tmp_path / "run")
    add_version(out, b"graph")
    version = out / "export" / "1"
    watched = os.stat(version / "saved_model.pb").st_ino
    staging = folders.staging_dir(out)
    (staging / "model.keras").write_bytes(b"new model")
    publish(staging, out)
    assert (out / "model.keras").read_bytes() == b"new model"
    assert (out / "export" / "1" / "saved_model.pb").read_bytes() == b"graph"
    assert os.stat(out / "export" / "1" / "saved_model.pb").st_ino == watched  # the same file, linked
    assert not (out / "config.json").exists()  # the old run is gone
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_publishing_swaps_the_folders_in_one_step(tmp_path, monkeypatch):
    old, new = tmp_path / "run", folders.staging_dir(tmp_path / "run")
    old.mkdir()
    (old / "a").write_text("old")
    (new / "a").write_text("new")
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(folders.os, "replace",  # no two-rename fallback (files are still written by replacing)
                        lambda a, b: calls.append(a) if os.path.isdir(a) else real_replace(a, b))
    publish(new, old)
    assert (old / "a").read_text() == "new" and calls == []


def test_new_files_and_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic.write_json(tmp_path / "x.json", {"a": 1})
        staging = folders.staging_dir(tmp_path / "run")
    finally:
        os.umask(previous)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640
    assert staging.stat().st_mode & 0o777 == 0o750


def test_metrics_update_is_atomic(tiny_run_dir, tmp_path, monkeypatch):
    run_dir = copy_run(tiny_run_dir, tmp_path / "run")
    before = (run_dir / "metrics.json").read_bytes()

    def dump_half_then_fail(obj, f, **kwargs):
        f.write('{"train_loss": 1.')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.json, "dump", dump_half_then_fail)
    with pytest.raises(OSError):
        rundir.update_metrics(run_dir, test_loss=2.0)
    assert (run_dir / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in tiny_run_dir.iterdir())


# ---------------------------------------------------------------------------------------------
# Reading a run back


def test_load_run_gives_the_model_its_configuration_and_vocabulary(tiny_run_dir):
    run = load_run(tiny_run_dir)
    assert run.config.block_size == 3 and run.vocab.chars[0] == "a"
    assert run.data_path.is_absolute() and run.data_path.name == "tiny.txt"
    assert run.info["data_sha256"] and set(run.metrics) >= {"train_loss", "dev_loss"}


def test_a_run_from_before_split_seed_splits_by_its_seed(tiny_run_dir, tmp_path):
    run_dir = copy_run(tiny_run_dir, tmp_path / "run")
    info = json.loads((run_dir / "config.json").read_text())
    info["config"].pop("split_seed")
    info["config"]["seed"] = 7
    (run_dir / "config.json").write_text(json.dumps(info))
    assert load_run(run_dir).config.split_seed == 7


@pytest.mark.parametrize("damage, message", [
    ("no model", "holds no kmlp model"), ("truncated", "corrupt or truncated"),
    ("garbage", "corrupt or truncated"), ("damaged member", "cannot be loaded"),
    ("vocabulary", "disagree"), ("config", "not a kmlp configuration"), ("lambda", "Lambda|safe_mode"),
    ("model is /dev/zero", r"model\.keras: not a regular file"),
    ("deep config", r"config\.json: not valid JSON \(nested too deeply\)"),
    ("integer character", "vocabulary entry 1 is not a character of a name: 1"),
    ("two-letter character", "vocabulary entry 2 is not a character of a name: 'bc'"),
    ("repeated character", "vocabulary characters must be unique; 'a' is there twice"),
    ("config not an object", r"config\.json: expected a JSON object, found an array"),
    ("metrics not an object", r"metrics\.json: expected a JSON object, found a number"),
])
def test_a_damaged_run_is_refused_with_a_clear_message(damage, message, tiny_run_dir, tmp_path):
    run_dir = copy_run(tiny_run_dir, tmp_path / "run")
    model_file = run_dir / "model.keras"
    good = model_file.read_bytes()
    info = json.loads((run_dir / "config.json").read_text())
    chars = {"integer character": [1, *info["vocab"]["chars"][1:]],
             "two-letter character": ["a", "bc", *info["vocab"]["chars"][2:]],
             "repeated character": ["a", *info["vocab"]["chars"][:-1]]}
    if damage in chars:
        info["vocab"]["chars"] = chars[damage]
        (run_dir / "config.json").write_text(json.dumps(info))
    elif damage == "model is /dev/zero":  # (reading it whole took half a minute, then ran out of memory)
        model_file.unlink()
        model_file.symlink_to("/dev/zero")
    elif damage == "deep config":
        (run_dir / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "config not an object":
        (run_dir / "config.json").write_text("[]")
    elif damage == "metrics not an object":
        (run_dir / "metrics.json").write_text("3")
    elif damage == "no model":
        model_file.unlink()
    elif damage == "truncated":
        model_file.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        model_file.write_bytes(os.urandom(len(good)))
    elif damage == "damaged member":
        with zipfile.ZipFile(tiny_run_dir / "model.keras") as src, zipfile.ZipFile(model_file, "w") as dst:
            for item in src.infolist():
                body = src.read(item)
                dst.writestr(item, body[: len(body) // 3] if item.filename.endswith(".h5") else body)
    elif damage in ("vocabulary", "config"):
        if damage == "vocabulary":
            info["vocab"]["chars"] = info["vocab"]["chars"][:-2]
        else:
            info["config"]["n_hiden"] = 3
        (run_dir / "config.json").write_text(json.dumps(info))
    else:  # a model that would run code when loaded
        inputs = keras.Input(shape=(3,), dtype="int32")
        outputs = keras.layers.Lambda(lambda x: keras.ops.one_hot(x[:, -1], 27))(inputs)
        keras.Model(inputs, outputs).save(model_file)
    with pytest.raises(RunError, match=message) as refused:
        load_run(run_dir)
    assert "\n" not in str(refused.value) and str(run_dir) in str(refused.value)


# ---------------------------------------------------------------------------------------------
# A lock, a backup and a run are known by their contents, never by their names


@pytest.mark.parametrize("case", ["user file", "empty file", "symlink to a file", "dangling symlink", "folder"])
def test_a_lock_path_that_is_not_a_kmlp_lock_is_refused_and_left_alone(case, tmp_path):
    lock, victim = tmp_path / ".run.lock", tmp_path / "victim.txt"
    victim.write_text("the user's")
    if case == "user file":
        lock.write_text("my notes")
    elif case == "empty file":
        lock.touch()
    elif case == "symlink to a file":
        lock.symlink_to(victim)
    elif case == "dangling symlink":
        lock.symlink_to(tmp_path / "nowhere")
    else:
        lock.mkdir()
    before = tree(tmp_path), os.path.lexists(lock)
    with pytest.raises(RunError, match=r"\.run\.lock: kmlp keeps its lock there, but this is not a kmlp lock"):
        with RunLock(tmp_path / "run"):
            pass
    with pytest.raises(RunError, match="not a kmlp lock"):
        check_out_dir(tmp_path / "run")
    assert (tree(tmp_path), os.path.lexists(lock)) == before
    assert victim.read_text() == "the user's" and not (tmp_path / "nowhere").exists()


def test_a_full_disk_leaves_no_lock_behind(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lock.os, "write", full)
    with pytest.raises(RunError, match=f"{tmp_path}: cannot write there .No space left on device"):
        with RunLock(tmp_path / "run"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_user_folder_named_like_a_backup_is_refused_and_kept(tiny_run_dir, tmp_path):
    from kmlp.training import backup as backups

    out = copy_run(tiny_run_dir, tmp_path / "run")
    (tmp_path / ".run.backup").mkdir()
    (tmp_path / ".run.backup" / "thesis.txt").write_text("years of work")
    with pytest.raises(RunError, match=r"\.run\.backup: kmlp keeps the backup of a training there, but this "
                                       r"is not a kmlp backup"):
        check_out_dir(out)
    backup = backups.Backup(out)
    with pytest.raises(RunError, match="not a kmlp backup"):
        backup.start(resume=False, expected={"config": {}, "plan": {}})
    backup.remove()
    assert (tmp_path / ".run.backup" / "thesis.txt").read_text() == "years of work"


def test_a_run_without_a_manifest_is_not_replaced(tiny_run_dir, tmp_path):
    out = copy_run(tiny_run_dir, tmp_path / "run")
    (out / manifest.MANIFEST_FILE).unlink()  # as a run written before manifests, or by hand
    with pytest.raises(RunError, match="config.json: kmlp did not write this .* has no kmlp-manifest.json"):
        check_out_dir(out)


def test_retraining_keeps_what_a_user_put_into_the_run_meanwhile(tiny_run_dir, tmp_path):
    out = copy_run(tiny_run_dir, tmp_path / "run")
    check_out_dir(out)
    (out / "logs" / "notes.txt").write_text("mine")  # during the training
    staging = folders.staging_dir(out)
    (staging / "model.keras").write_bytes(b"new model")
    left = publish(staging, out)
    assert (out / "model.keras").read_bytes() == b"new model"
    assert left is not None and (left / "logs" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in left.rglob("*")) == ["logs", "notes.txt"]  # kmlp's own files went
