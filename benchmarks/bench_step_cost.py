"""What a step of a candidate recipe costs against a step of the `best` preset, measured side by side.

A run's own steps/s depend on whatever else the machine runs at the time; a ratio of two recipes
timed in alternation does not, or much less. Each candidate is a string of `kmlp train` flags on top
of `--preset best` (e.g. "--batch-size 2048"). Every model is built and compiled first, then each
takes ``--rounds`` turns of ``--chunk`` optimizer steps, in alternation with the others, on the same
minibatches (those of its own batch size); printed: the medians of steps per second of wall time
and per CPU-second of this process, the cost of a step against `best`'s, and how many steps of the
candidate cost as much as ``--budget-steps`` steps of `best` (by default 12,000, about what ten
minutes of training allow on the results table's machine: 8,000 steps took 385 s there).

    python benchmarks/bench_step_cost.py "--batch-size 2048" "--n-layers 4" "--n-hidden 640"
    python benchmarks/bench_step_cost.py "--arch hierarchical --n-hidden 320" --rounds 9
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from kmlp.utils.quiet import silence_tensorflow

BUDGET_STEPS = 12_000  # `best` steps in about ten minutes on the results table's machine


def candidate_config(flags: str):
    """The configuration `kmlp train --preset best FLAGS` would train."""
    from kmlp.cli.main import build_parser
    from kmlp.cli.flags import config_from_args

    args = build_parser().parse_args(["train", "--preset", "best", *shlex.split(flags)])
    return config_from_args(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", nargs="*", metavar="FLAGS",
                   help='kmlp train flags on top of --preset best, one quoted string per candidate')
    p.add_argument("--data", metavar="PATH", help="names file (default: kmlp's data/names.txt)")
    p.add_argument("--chunk", type=int, default=100, help="optimizer steps per timed call (default 100)")
    p.add_argument("--rounds", type=int, default=5, help="timed calls of each recipe, alternated (default 5)")
    p.add_argument("--budget-steps", type=int, default=BUDGET_STEPS,
                   help=f"steps of best that the budget allows (default {BUDGET_STEPS:,})")
    args = p.parse_args(argv)
    for name in ("chunk", "rounds", "budget_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    silence_tensorflow()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_best import alternated_step_rates
    from kmlp.config import preset
    from kmlp.data.pipeline import NamesData
    from kmlp.training.setup import set_op_threads

    recipes = [("best", preset("best")), *((flags, candidate_config(flags)) for flags in args.candidates)]
    data = NamesData.for_config(args.data, recipes[0][1])  # every recipe on the same split
    set_op_threads(recipes[0][1], len(data.vocab))
    print(f"step cost against --preset best on {data.path}: {args.rounds} rounds of {args.chunk} steps of each, "
          f"alternated; load average {os.getloadavg()[0]:.2f}", flush=True)
    wall, cpu = alternated_step_rates([config for _, config in recipes], data, args.chunk, args.rounds)
    print(f"| recipe | steps/s | steps per CPU-second | cost of a step (wall, CPU) | steps in "
          f"{args.budget_steps:,} of best's |\n|---|---:|---:|---:|---:|")
    for (label, _), w, c in zip(recipes, wall, cpu):
        ratio = wall[0] / w
        print(f"| {label} | {w:.1f} | {c:.2f} | {ratio:.2f}, {cpu[0] / c:.2f} | {args.budget_steps / ratio:,.0f} |")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
