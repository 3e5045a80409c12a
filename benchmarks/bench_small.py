"""Small lists: training from scratch against fine-tuning the shipped names run, side by side.

    apt-get install witalian && pip install -e ".[bench]"      # the two sources (not in the repository)
    python benchmarks/bench_small.py                             # 100, 300, 1,000 lines, a minute each
    python benchmarks/bench_small.py --sizes 300 --minutes 1 --sources turkish
    python benchmarks/bench_small.py --only tuned --epochs 100 --lr 0.001   # fine-tuning at a fixed rate

Two sources unlike names.txt: ``turkish``, the Turkish first names of Faker (PyPI, MIT licence:
``faker.providers.person.tr_TR``, with characters names.txt lacks: ç ğ ı ö ş ü), and ``italian``,
Italian words from Debian's ``witalian`` word list (``/usr/share/dict/italian``; GPL, read at run
time, never copied). From each, lists of each size are drawn at random (lowercased, distinct), which
kmlp splits 80/10/10 as it splits any list. Each list is trained twice with the same time budget
(``--minutes``): from scratch, with the shipped run's architecture and the ``default`` preset's recipe
(early stopping is on for a list this small), and with ``--from`` the shipped run (fine-tuning's
defaults, the same budget). Printed per run: dev loss, test loss, the share of 500 sampled names
that are not in the list, and the seconds of the whole training call. ``--epochs``, ``--only`` and
``--lr`` measure fine-tuning's rule for its rate (docs/fine-tuning.md): a fixed number of passes
instead of the budget, one of the two trainings, a fixed fine-tuning rate.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kmlp.utils.quiet import silence_tensorflow  # noqa: E402

silence_tensorflow()

from kmlp.config import PRESETS, Config, preset  # noqa: E402
from kmlp.generation.sample import NameModel, where_found  # noqa: E402
from kmlp.runs.rundir import read_run_config  # noqa: E402
from kmlp.runs.start import ARCHITECTURE, start_from  # noqa: E402
from kmlp.training.setup import EVAL_BATCH, evaluate_loss  # noqa: E402
from kmlp.training.train import train  # noqa: E402

SHIPPED = Path(__file__).resolve().parent.parent / "saved_models" / "names-base"
ITALIAN_WORDS = Path("/usr/share/dict/italian")
SAMPLED = 500  # names sampled per run to count the new ones
KINDS = ("scratch", "tuned")  # the two trainings of each list, in the table's order


def turkish_names() -> list[str]:
    try:
        from faker.providers.person.tr_TR import Provider
    except ImportError:
        sys.exit("bench_small: the turkish source needs Faker: pip install -e \".[bench]\"")
    return [*Provider.first_names_male, *Provider.first_names_female]


def italian_words() -> list[str]:
    if not ITALIAN_WORDS.is_file():
        sys.exit(f"bench_small: the italian source needs {ITALIAN_WORDS}: apt-get install witalian")
    return ITALIAN_WORDS.read_text(encoding="utf-8").splitlines()


SOURCES = {"turkish": turkish_names, "italian": italian_words}


def draw(lines: list[str], size: int, seed: int) -> list[str]:
    """``size`` distinct lowercased lines of letters (no apostrophes, digits or spaces) at random."""
    kept = sorted({line.strip().lower() for line in lines if line.strip().isalpha()})
    if len(kept) < size:
        sys.exit(f"bench_small: the source has {len(kept):,} distinct lines, fewer than {size:,}")
    return random.Random(seed).sample(kept, size)


def scratch_config(start_run: Path, recipe: str = "default", **length) -> Config:
    """The ``recipe`` preset with the start run's architecture (a like-for-like model)."""
    run_config = read_run_config(start_run)[0]
    return preset(recipe).replace(**{key: getattr(run_config, key) for key in ARCHITECTURE}, **length)


def measure(config: Config, words: list[str], folder: Path, label: str, sampled: int = SAMPLED) -> dict:
    """Train ``config`` on ``words`` into ``folder / label``; its dev and test losses, the share of
    ``sampled`` names that are new, and its seconds."""
    path = folder / f"{label}.txt"
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    began = time.perf_counter()
    result = train(config, data_path=path, out_dir=folder / label, verbose=0, log=lambda *_: None)
    seconds = time.perf_counter() - began
    data = result.data
    names = NameModel(result.model, data.vocab).sample(sampled, seed=1)
    new = sum(mark == "new" for mark in where_found(names, data.words)) / len(names)
    return {"dev": result.metrics["dev_loss"], "test": evaluate_loss(result.model, data.dataset("test", EVAL_BATCH)),
            "new": new, "seconds": seconds}


def compare(lists: dict[str, list[str]], sizes, start_run: Path, seed: int = 0, recipe: str = "default",
            sampled: int = SAMPLED, kinds=KINDS, tuning: dict | None = None, **length) -> list[dict]:
    """For each source's list and size, a row: the scratch and the fine-tuned run's figures (of the
    ``kinds`` asked for; ``tuning``: options of the fine-tuning only, such as a fixed ``lr``)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmlp-small-") as scratch:
        folder = Path(scratch)
        for source, lines in lists.items():
            for size in sizes:
                words = draw(lines, size, seed)
                label = f"{source}-{size}"
                configs = {"scratch": lambda: scratch_config(start_run, recipe, **length),
                           "tuned": lambda: start_from(start_run, recipe, **length, **(tuning or {}))}
                row = {"source": source, "size": size}
                for kind in kinds:
                    row[kind] = measure(configs[kind](), words, folder, f"{label}-{kind}", sampled)
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


HEADER = ("| source | lines | dev, scratch | dev, fine-tuned | gain | test, scratch | test, fine-tuned "
          "| new, scratch | new, fine-tuned | s, scratch | s, fine-tuned |\n|---|---:|---:|---:|---:|---:|---:"
          "|---:|---:|---:|---:|")


def format_row(row: dict) -> str:
    """A row of :data:`HEADER`; a kind not run leaves its cells (and the gain) empty."""
    def cell(kind, key, form):
        return format(row[kind][key], form) if kind in row else ""

    gain = format(row["scratch"]["dev"] - row["tuned"]["dev"], ".3f") if set(KINDS) <= set(row) else ""
    cells = [row["source"], f"{row['size']:,}", cell("scratch", "dev", ".3f"), cell("tuned", "dev", ".3f"), gain,
             *(cell(kind, key, form) for key, form in (("test", ".3f"), ("new", ".0%"), ("seconds", ".0f"))
               for kind in KINDS)]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", nargs="+", choices=sorted(SOURCES), default=sorted(SOURCES),
                   help="where the lists come from (default: both)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 300, 1000],
                   help="list sizes, comma-separated (default 100,300,1000)")
    p.add_argument("--minutes", type=float, default=1.0, help="time budget of every training (default 1)")
    p.add_argument("--steps", type=int, help="a fixed number of steps instead of --minutes (a smoke test)")
    p.add_argument("--epochs", type=int, help="a fixed number of passes over the list instead of --minutes")
    p.add_argument("--only", choices=KINDS, help="run only the trainings from scratch, or only the fine-tunings")
    p.add_argument("--lr", type=float, help="fine-tune at this fixed rate (default: fine-tuning's, --lr-passes)")
    p.add_argument("--from", dest="start_run", type=Path, default=SHIPPED,
                   help="the run to fine-tune (default: saved_models/names-base)")
    p.add_argument("--words", type=Path, help="one list file as the only source, instead of --sources")
    p.add_argument("--seed", type=int, default=0, help="which lines are drawn (default 0)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="the recipe of both trainings (default: default; fast: a smoke test)")
    p.add_argument("--sampled", type=int, default=SAMPLED,
                   help=f"names sampled per run to count the new ones (default {SAMPLED})")
    args = p.parse_args(argv)
    lists = {args.words.stem: args.words.read_text(encoding="utf-8").splitlines()} if args.words else \
        {name: SOURCES[name]() for name in args.sources}
    length = {"steps": args.steps} if args.steps else {"epochs": args.epochs} if args.epochs else \
        {"minutes": args.minutes}
    (name, value), = length.items()
    print(f"from scratch against --from {args.start_run}, {value:g} {name} each"
          + (f", fine-tuned at --lr {args.lr:g}" if args.lr else "") + "\n" + HEADER)
    rows = compare(lists, args.sizes, args.start_run, args.seed, args.preset, args.sampled,
                   kinds=[args.only] if args.only else KINDS, tuning={"lr": args.lr} if args.lr else {}, **length)
    gains = [row["scratch"]["dev"] - row["tuned"]["dev"] for row in rows if set(KINDS) <= set(row)]
    if gains:
        print(f"fine-tuning's dev loss gain: least {min(gains):.3f}, most {max(gains):.3f} nats "
              f"(better in {sum(g > 0 for g in gains)} of {len(gains)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
