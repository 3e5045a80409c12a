"""kmlp.cli: values no machine can hold, damaged files and held locks are one line, before TensorFlow
loads; a full disk or a read-only file system is one line naming the path, with the old run intact."""

import errno
import os
import shutil

import pytest
from cli_helpers import TINY_MODEL, assert_one_line_error, kmlp_process, main, main_in_a_fresh_process

from kmlp.cli.main import os_error_message
from kmlp.data.files import MAX_LINE_BYTES
from kmlp.runs import manifest
from kmlp.runs.lock import RunLock
from kmlp.utils import atomic

BEYOND_INT64 = str(10**20)


def test_what_cannot_be_represented_or_held_in_memory_is_refused_before_tensorflow_loads(tiny_names_file,
                                                                                         tmp_path):
    files = {"digits.json": '{"n_hidden": ' + "9" * 5000 + "}", "deep.json": "[" * 100_000 + "]" * 100_000,
             "float.json": '{"n_hidden": 1e20}', "int.json": '{"n_hidden": ' + BEYOND_INT64 + "}",
             "flag.json": '{"steps": true}', "wide.json": '{"n_hidden": 1000000000}'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    train = ["train", "--data", tiny_names_file, "--out", tmp_path / "run"]
    not_utf8 = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    cases = [
        ([*train, "--block-size", BEYOND_INT64], "--block-size must be below 2**63"),
        ([*train, "--n-hidden", BEYOND_INT64], "--n-hidden must be below 2**63"),
        ([*train, "--steps-per-call", BEYOND_INT64], "--steps-per-call must be below 2**63"),
        ([*train, "--n-hidden", "1000000000"], "a training with --block-size 8, --n-embd 32, --n-hidden 1000000000"),
        ([*train, "--steps-per-call", str(10**15)], "a training with --steps-per-call 1000000000000000"),
        ([*train, "--batch-size", str(10**15)], "a training with --batch-size 1000000000000000"),
        ([*train, "--samples", str(10**15)], "--samples 1000000000000000: the names sampled at the end would take"),
        (["sample", tmp_path / "run", "--top-k", BEYOND_INT64], "--top-k must be below 2**31"),
        ([*train, "--strategy", "mirrored", "--devices", "65"], "--devices must be an integer from 0 (the devices as"),
        (["lr-find", "--num-steps", BEYOND_INT64], "--num-steps must be below 2**63"),
        (["lr-find", "--num-steps", str(10**15)], "the rates and losses of the range test would take"),
        (["tune", "--steps", BEYOND_INT64, "--out", tmp_path / "tuning"], "--steps must be below 2**63"),
        ([*train, "--config", tmp_path / "digits.json"], "digits.json: not valid JSON (Exceeds the limit"),
        ([*train, "--config", tmp_path / "deep.json"], "deep.json: not valid JSON (nested too deeply)"),
        ([*train, "--config", tmp_path / "float.json"], "float.json: n_hidden must be a positive integer, got 1e+20"),
        ([*train, "--config", tmp_path / "int.json"], "int.json: n_hidden must be below 2**63"),
        ([*train, "--config", tmp_path / "flag.json"], "flag.json: steps must be a positive integer, got true"),
        ([*train, "--config", tmp_path / "wide.json"], "wide.json: a training with --block-size 8, --n-embd 32, "
                                                      "n_hidden 1000000000"),
        (["train", "--data", tiny_names_file, "--out", not_utf8], r"--out " + str(tmp_path) + r"/run\xff: the "
                                                                  "name is not UTF-8"),
        (["train", "--data", not_utf8, "--out", tmp_path / "run"], r"--data " + str(tmp_path) + r"/run\xff: the "
                                                                   "name is not UTF-8"),
        (["evaluate", tmp_path / "run", "--data", not_utf8], r"/run\xff: the name is not UTF-8"),
    ]
    results, tensorflow = main_in_a_fresh_process(*(argv for argv, _ in cases))
    for (argv, needle), (code, err) in zip(cases, results):
        assert_one_line_error(code, err, needle)
    assert tensorflow is False
    assert sorted(os.listdir(tmp_path)) == sorted([*files, "tiny.txt"])  # no run, backup or lock begun


def test_an_input_that_never_ends_is_refused_in_one_line_with_bounded_memory(tmp_path):
    """/dev/zero as the names file, the names to score or the configuration, in a process whose memory
    is capped far below what reading it whole would take (it would fail with a MemoryError)."""
    endless_line = f"/dev/zero:1: a line of more than {MAX_LINE_BYTES:,} bytes is not a name"
    cases = [(["train", "--data", "/dev/zero", "--out", tmp_path / "run"], endless_line),
             (["score", tmp_path / "run", "--file", "/dev/zero"], endless_line),
             (["train", "--config", "/dev/zero", "--out", tmp_path / "run"], "/dev/zero: not a regular file")]
    for args, message in cases:
        done = kmlp_process(*args, address_space=512 << 20, timeout=60)
        assert_one_line_error(done.returncode, done.stderr, message)
    assert not os.listdir(tmp_path)


def test_a_held_run_is_refused_at_once_by_export_and_evaluate(tmp_path):
    with RunLock(tmp_path / "run"):
        results, tensorflow = main_in_a_fresh_process(["export", tmp_path / "run"], ["evaluate", tmp_path / "run"])
    for code, err in results:
        assert_one_line_error(code, err, f"{tmp_path / 'run'}: in use by another kmlp process (pid {os.getpid()}")
    assert tensorflow is False


def test_an_os_error_is_its_path_and_the_systems_reason():
    refused = OSError(errno.EROFS, os.strerror(errno.EROFS), "/runs/a")
    assert os_error_message(refused, None) == "/runs/a: Read-only file system"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write to an open file names none
    assert os_error_message(full, type("Args", (), {"out": "runs/a"})) == "No space left on device (working in runs/a)"


# ---------------------------------------------------------------------------------------------
# A full disk, a read-only file system


@pytest.fixture(scope="module")
def tiny_run(tiny_run_dir):
    return tiny_run_dir


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write says it: no file named


def read_only(folder, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))


@pytest.mark.parametrize("fault", ["config.json: no space", "publish: read-only"])
def test_training_again_on_a_full_or_read_only_disk_keeps_the_old_run(fault, tiny_run, tmp_path, monkeypatch,
                                                                      capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    before = tree(out)
    replace = atomic.os.replace
    if fault == "config.json: no space":
        monkeypatch.setattr(atomic.os, "replace",
                            lambda src, dst: no_space() if dst.name == "config.json" else replace(src, dst))
        needles = ["/config.json: No space left on device"]
    else:
        monkeypatch.setattr(manifest, "write", read_only)
        needles = [".run.partial-", ": Read-only file system"]
    code, _, err = main(capsys, "train", "--data", tiny_run.parent / "tiny.txt", "--out", out, *TINY_MODEL,
                        "--quiet", "--samples", "0")
    assert_one_line_error(code, err, *needles)
    assert tree(out) == before
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p or p.endswith(".lock")]


def test_export_and_evaluate_on_a_full_disk_leave_the_run_as_it_was(tiny_run, tmp_path, monkeypatch, capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    before = tree(out)
    monkeypatch.setattr(atomic.json, "dump", no_space)
    code, _, err = main(capsys, "export", out)
    assert_one_line_error(code, err, f"{out / manifest.MANIFEST_FILE}: No space left on device")
    code, _, err = main(capsys, "evaluate", out, "--split", "test")
    assert_one_line_error(code, err, f"{out / 'metrics.json'}: cannot be written (No space left on device)")
    assert tree(out) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_an_export_that_tensorflow_cannot_write_is_one_line_and_leaves_no_version(tiny_run, tmp_path, monkeypatch,
                                                                                   capsys):
    import tensorflow as tf

    def full_disk(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    out = shutil.copytree(tiny_run, tmp_path / "run")
    before = tree(out)
    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    code, _, err = main(capsys, "export", out)
    assert_one_line_error(code, err, f"{out / 'export' / '1'}: not exported (No space left on device)")
    assert tree(out) == before and not any((out / "export").iterdir())  # no version, no staging folder
