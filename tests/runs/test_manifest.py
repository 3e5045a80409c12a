"""kmlp.runs.manifest: what kmlp wrote into a folder, checked at any depth; only that is ever deleted."""

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kmlp.errors import NotOwned
from kmlp.runs import manifest
from kmlp.runs.manifest import MANIFEST_FILE


def make_tree(root, files: dict):
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


FILES = {"model.keras": b"model", "logs/train/events.1": b"e1", "logs/validation/events.2": b"e2",
         "export/1/saved_model.pb": b"graph"}


def test_a_folder_kmlp_wrote_is_its_own_and_is_removed_whole(tmp_path):
    make_tree(tmp_path / "run", FILES)
    entries = manifest.write(tmp_path / "run", "run")
    assert entries["logs/"] == {} and entries["model.keras"]["size"] == 5
    manifest.check_owned(tmp_path / "run", "run")
    assert manifest.remove_owned(tmp_path / "run") == []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("foreign", ["notes.txt", "logs/mine.txt", "logs/B/model.keras", "export/1/extra/x"])
def test_anything_unlisted_at_any_depth_is_named_and_kept(tmp_path, foreign):
    run = tmp_path / "run"
    make_tree(run, FILES)
    manifest.write(run, "run")
    make_tree(run, {foreign: b"the user's"})
    with pytest.raises(NotOwned, match="kmlp did not write this"):
        manifest.check_owned(run, "run")
    kept = manifest.remove_owned(run)
    assert kept and all(foreign.startswith(k.rstrip("/")) or k == foreign for k in kept)
    assert (run / foreign).read_bytes() == b"the user's"
    assert not (run / "model.keras").exists()  # kmlp's own files went


def test_a_changed_file_is_no_longer_kmlps(tmp_path):
    run = tmp_path / "run"
    make_tree(run, FILES)
    manifest.write(run, "run")
    (run / "model.keras").write_bytes(b"MODEL")  # same size, other contents
    with pytest.raises(NotOwned, match="model.keras: kmlp did not write this .or it changed"):
        manifest.check_owned(run, "run")
    assert manifest.remove_owned(run) == ["model.keras"] and (run / "model.keras").read_bytes() == b"MODEL"


def test_a_symbolic_link_is_never_followed_nor_owned(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim"
    make_tree(run, FILES)
    make_tree(victim, {"thesis.txt": b"years"})
    manifest.write(run, "run")
    os.symlink(victim, run / "logs" / "train" / "link")
    with pytest.raises(NotOwned, match="link"):
        manifest.check_owned(run, "run")
    manifest.remove_owned(run)
    assert (victim / "thesis.txt").read_bytes() == b"years"
    with pytest.raises(NotOwned, match="not a regular file"):
        manifest.scan(run)


@pytest.mark.parametrize("contents", [None, b"{}", b"not json", b'{"kmlp_manifest": 1, "kind": "run"}'])
def test_a_folder_without_a_real_manifest_is_not_kmlps(tmp_path, contents):
    run = tmp_path / "run"
    make_tree(run, {"logs/events": b"someone else's logs"})
    if contents is not None:
        (run / MANIFEST_FILE).write_bytes(contents)
    with pytest.raises(NotOwned):
        manifest.check_owned(run, "run")
    before = snapshot(run)
    manifest.remove_owned(run)
    assert snapshot(run) == before


def test_a_manifest_that_is_a_symbolic_link_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    manifest.write(tmp_path / "elsewhere", "run")
    (tmp_path / "run").mkdir()
    os.symlink(tmp_path / "elsewhere" / MANIFEST_FILE, tmp_path / "run" / MANIFEST_FILE)
    with pytest.raises(NotOwned, match="not a kmlp manifest"):
        manifest.check_owned(tmp_path / "run", "run")


def test_another_kind_of_result_is_refused(tmp_path):
    make_tree(tmp_path / "lr", {"lr_find.csv": b"rate,loss\n"})
    manifest.write(tmp_path / "lr", "lr_find")
    with pytest.raises(NotOwned, match="holds range test results, not a kmlp run"):
        manifest.check_owned(tmp_path / "lr", "run")


def test_added_and_rewritten_files_are_recorded(tmp_path):
    run = tmp_path / "run"
    make_tree(run, FILES)
    manifest.write(run, "run")
    make_tree(tmp_path / "staging", {"saved_model.pb": b"v2", "variables/v.index": b"i"})
    manifest.add(run, manifest.entries_of(tmp_path / "staging", "export/2"))
    os.rename(tmp_path / "staging", run / "export" / "2")
    (run / "model.keras").write_bytes(b"retrained model")
    manifest.record_files(run, "model.keras")
    manifest.check_owned(run, "run")


def test_listed_files_are_linked_into_a_new_folder(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    make_tree(old, FILES)
    manifest.write(old, "run")
    make_tree(old, {"export/mine.txt": b"user"})
    new.mkdir()
    manifest.link_listed(old, new, {"export"})
    assert snapshot(new) == {"export": None, "export/1": None, "export/1/saved_model.pb": b"graph"}
    assert os.stat(new / "export/1/saved_model.pb").st_ino == os.stat(old / "export/1/saved_model.pb").st_ino


segment = st.text("abcxyz._-", min_size=1, max_size=6).filter(lambda s: s not in {".", ".."})
trees = st.dictionaries(st.lists(segment, min_size=1, max_size=3).map("/".join), st.binary(max_size=20),
                        min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ours=trees, theirs=trees)
def test_whatever_the_user_adds_is_refused_and_survives_removal(tmp_path_factory, ours, theirs):
    root = tmp_path_factory.mktemp("prop")
    try:
        make_tree(root, ours)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        return  # a path that is both a file and a folder: not a tree
    manifest.write(root, "run")
    added = {}
    for path, data in theirs.items():
        try:
            make_tree(root, {path: data})
            added[path] = data
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass
    changed = {p: d for p, d in added.items() if ours.get(p) != d}
    if changed:
        with pytest.raises(NotOwned):
            manifest.check_owned(root, "run")
    else:
        manifest.check_owned(root, "run")
    manifest.remove_owned(root)
    for path, data in changed.items():
        assert (root / path).read_bytes() == data
