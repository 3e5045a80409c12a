"""Names sampled from a saved run, each marked with where it is found in the run's names file.

A name the model merely memorised shows up in "train", one it could only have guessed in "dev" or
"test"; the share of "new" names is how much the model invents::

    sample = sample_run(run, 1000, seed=1, temperature=0.8)
    for name, found_in in sample: ...
    sample.new_share                    # of the names given so far
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

from kmlp.errors import ConfigError
from kmlp.generation.drawing import Sampling
from kmlp.generation.sample import NameModel, split_index
from kmlp.runs.rundir import Run

MARKS = ("train", "dev", "test", "new")


@dataclass
class MarkedSample:
    """Names as they are drawn, each with the split it is found in, or "new"; marked None for all
    when the run's names file cannot be read (``unavailable`` says why). Counts as it goes."""

    names: Iterator[str]
    split_of: dict[str, str] | None
    unavailable: str | None = None
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MARKS, 0))

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        for name in self.names:
            mark = None if self.split_of is None else self.split_of.get(name, "new")
            if mark:
                self.found[mark] += 1
            yield name, mark

    @property
    def total(self) -> int:
        """Names given so far (when they are marked)."""
        return sum(self.found.values())

    @property
    def copies(self) -> int | None:
        """Names given so far that are copies of the run's list (in any split); None without marks."""
        return self.total - self.found["new"] if self.split_of is not None else None

    @property
    def new_share(self) -> float | None:
        """The share of the names given so far that are new; None without marks or names."""
        return self.found["new"] / self.total if self.split_of is not None and self.total else None


def sample_run(run: Run, num: int, seed: int | None = None, *, unique: bool = False, new: bool = False,
               data_path: str | os.PathLike | None = None, **options) -> MarkedSample:
    """``num`` names drawn from the run's model (see :meth:`NameModel.stream` for ``seed``,
    ``unique`` and the sampling ``options``), marked against the splits of ``data_path`` (default:
    the file the run was trained on). ``new`` draws until ``num`` names in none of the splits are
    found, so it needs that file."""
    lm = NameModel(run.model, run.vocab)
    sampling = Sampling(**options).check(run.vocab.chars)  # the prefix, before the data is read
    splits, unavailable = run.splits(data_path)
    if new and not splits:
        raise ConfigError(f"--new needs the names the model was trained on: {unavailable}")
    split_of = split_index(splits) if splits else None
    names = lm.stream(num, seed, unique=unique, exclude=split_of if new else None, **sampling.to_dict())
    return MarkedSample(names, split_of, unavailable)
