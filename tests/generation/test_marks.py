"""kmlp.generation.marks: names sampled from a run, each marked with the split it is found in."""

import dataclasses

import pytest

from kmlp.errors import ConfigError
from kmlp.generation.marks import sample_run
from kmlp.generation.sample import NameModel, where_found
from kmlp.runs.rundir import load_run


@pytest.fixture(scope="module")
def run(tiny_run_dir):
    return load_run(tiny_run_dir)


def test_names_come_as_the_model_draws_them_marked_and_counted(run):
    sample = sample_run(run, 40, seed=3, temperature=0.7)
    marked = list(sample)
    names = [name for name, _ in marked]
    assert names == NameModel(run.model, run.vocab).sample(40, seed=3, temperature=0.7)
    assert [mark for _, mark in marked] == where_found(names, run.splits()[0])
    assert sample.total == 40 and sum(sample.found.values()) == 40
    assert sample.new_share == pytest.approx(sample.found["new"] / 40) and sample.unavailable is None
    assert sample.copies == sum(mark != "new" for _, mark in marked) == 40 - sample.found["new"]


def test_new_draws_only_names_in_no_split(run):
    sample = sample_run(run, 10, seed=1, new=True, unique=True)
    assert [mark for _, mark in sample] == ["new"] * 10 and sample.new_share == 1.0


def test_without_the_runs_names_file_names_are_unmarked_and_new_is_refused(run, tmp_path):
    moved = dataclasses.replace(run, info={**run.info, "data": str(tmp_path / "gone.txt")})
    sample = sample_run(moved, 5, seed=1)
    assert [mark for _, mark in sample] == [None] * 5
    assert sample.new_share is None and sample.copies is None and "gone.txt" in sample.unavailable
    with pytest.raises(ConfigError, match="--new needs the names the model was trained on: .*gone.txt"):
        sample_run(moved, 5, seed=1, new=True)


def test_a_prefix_outside_the_vocabulary_is_refused_before_drawing(run):
    with pytest.raises(ConfigError, match="--prefix 'zoë'"):
        sample_run(run, 5, prefix="zoë")
