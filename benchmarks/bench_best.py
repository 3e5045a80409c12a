"""Time to dev loss <= 1.95 on names.txt: the `best` recipe as it was (float32 with XLA, 12,000 steps)
against the `best` preset now, measured in one run.

1. Full runs. Each recipe is trained from scratch through ``kmlp.train`` (what ``kmlp train
   --preset best`` runs), one after the other. A callback notes the dev loss at every evaluation and
   the seconds since ``fit`` began, and splits the fit's time into compiled training calls, dev
   evaluations, and the rest (backups, logs). Printed per recipe: the first evaluation at or under
   the target (step and seconds), the final dev loss and the fit's seconds.
2. Step cost side by side. The full runs see whatever load the machine has while they run; so both
   recipes' models are also run in alternation, ``--rounds`` times ``--chunk`` optimizer steps each
   on the same minibatches, and the medians of their steps per second of wall time and per second
   of the process's CPU time are taken. On a busy machine the CPU-time ratio is the steadier one.
3. The verdict: the new recipe's time to the target over the old one's, from the full runs, and from
   the steps each needed to reach it at the alternated step costs (evaluations and backups added at
   the share the full run measured).

    python benchmarks/bench_best.py                           # both full runs and the step costs
    python benchmarks/bench_best.py --skip-full --rounds 9    # step costs only (about 2 minutes)
    python benchmarks/bench_best.py --steps 100 --target 2.8  # a short try of the whole benchmark
    python benchmarks/bench_best.py --steps 100 --target 2.8 --n-hidden 16  # shorter: a small model
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kmlp.utils.quiet import silence_tensorflow

TARGET = 1.95
# The `best` preset before it was made faster (dev 1.9477): the same model and recipe in float32,
# with XLA, for 12,000 steps; `kmlp train --preset best --precision float32 --jit --steps 12000`.
BEFORE = dict(precision="float32", jit_compile=True, steps=12_000)


def recipes(steps: int | None, n_hidden: int | None = None):
    """(label, Config) of the old and the new recipe; ``steps`` replaces both step counts, and
    ``n_hidden`` both models' width."""
    from kmlp.config import preset

    new = preset("best")
    if n_hidden:
        new = new.replace(n_hidden=n_hidden)
    old = new.replace(**BEFORE)
    if steps:
        old, new = old.replace(steps=steps), new.replace(steps=steps)
    return [("before: float32, XLA", old), (f"now: --preset best ({new.precision})", new)]


def describe(config) -> str:
    return (f"{config.steps:,} steps at batch {config.batch_size}, {config.precision}, "
            f"{'XLA' if config.jit_compile else 'no XLA'}, rdrop {config.rdrop:g}")


def timeline_callback():
    import keras

    class Timeline(keras.callbacks.Callback):
        """Dev loss and seconds since fit began at every evaluation; fit's time by what it was spent on."""

        def on_train_begin(self, logs=None):
            self.began, self.cpu_began = time.perf_counter(), time.process_time()
            self.points = []  # (seconds, CPU seconds, step, dev loss)
            self.training = self.evaluating = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.mark = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.training += time.perf_counter() - self.mark

        def on_test_begin(self, logs=None):
            self.mark = time.perf_counter()

        def on_test_end(self, logs=None):
            self.evaluating += time.perf_counter() - self.mark

        def on_epoch_end(self, epoch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            self.points.append((time.perf_counter() - self.began, time.process_time() - self.cpu_began, step,
                                float(logs["val_loss"])))

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.began

        def first_at_or_under(self, target):
            return next((point for point in self.points if point[-1] <= target), None)

    return Timeline()


def full_run(label, config, data, workdir: Path, target: float) -> dict:
    from kmlp.training.train import train

    timeline = timeline_callback()
    result = train(config, data=data, out_dir=workdir / f"run-{len(os.listdir(workdir))}",
                   callbacks=[timeline], verbose=0, log=lambda *_: None)
    reached = timeline.first_at_or_under(target)
    overhead = 1 - timeline.training / timeline.seconds
    print(f"{label}: {describe(config)}")
    print(f"  dev loss {result.metrics['dev_loss']:.4f} after {timeline.seconds:.0f} s of fit "
          f"({timeline.training:.0f} s in training calls, {timeline.evaluating:.0f} s in "
          f"{len(timeline.points)} dev evaluations, {timeline.seconds - timeline.training - timeline.evaluating:.0f}"
          f" s in backups and logs: {overhead:.1%} outside training calls)")
    if reached:
        seconds, cpu_seconds, step, dev = reached
        print(f"  dev loss <= {target} first at step {step:,}: {seconds:.0f} s, {cpu_seconds:.0f} CPU-seconds "
              f"(dev {dev:.4f})")
    else:
        print(f"  dev loss never <= {target}")
    print(f"  load average {os.getloadavg()[0]:.2f}", flush=True)
    return {"reached": reached, "overhead": overhead, "seconds": timeline.seconds}


def alternated_step_rates(configs, data, chunk: int, rounds: int):
    """Medians of each configuration's steps per second of wall time and per second of this process's
    CPU time, over training calls run in alternation on the same minibatches. Other programs on the
    machine slow the first down; the second hardly moves with them."""
    from kmlp.training.setup import build_compiled_model

    runs = []
    for config in configs:
        model = build_compiled_model(config, len(data.vocab))
        x, y = next(iter(data.dataset("train", config.batch_size, seed=config.seed, steps_per_call=chunk)))
        model.train_on_batch(x, y)  # compiles
        runs.append((model, x, y))
    wall, cpu = [[] for _ in configs], [[] for _ in configs]
    for r in range(rounds):
        for (model, x, y), w, c in zip(runs, wall, cpu):
            started, cpu_started = time.perf_counter(), time.process_time()
            model.train_on_batch(x, y)
            w.append(chunk / (time.perf_counter() - started))
            c.append(chunk / (time.process_time() - cpu_started))
        print(f"  round {r + 1}: " + "  ".join(f"{w[-1]:6.1f}" for w in wall) + " steps/s", flush=True)
    return [statistics.median(w) for w in wall], [statistics.median(c) for c in cpu]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="PATH", help="names file (default: kmlp's data/names.txt)")
    p.add_argument("--target", type=float, default=TARGET, help=f"dev loss to reach (default {TARGET})")
    p.add_argument("--steps", type=int, help="train both recipes for this many steps instead (a short try)")
    p.add_argument("--chunk", type=int, default=100, help="optimizer steps per timed call (default 100)")
    p.add_argument("--rounds", type=int, default=5, help="timed calls of each recipe, alternated (default 5)")
    p.add_argument("--skip-full", action="store_true", help="only the alternated step costs")
    p.add_argument("--n-hidden", type=int, help="hidden units of both recipes' layers instead of 512 (a "
                   "quicker try; the figures are then not the preset's)")
    args = p.parse_args(argv)
    for name in ("chunk", "rounds", "steps", "n_hidden"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    silence_tensorflow()
    from kmlp.data.pipeline import NamesData
    from kmlp.training.setup import set_op_threads

    (old_label, old), (new_label, new) = recipes(args.steps, args.n_hidden)
    data = NamesData.for_config(args.data, old)  # both recipes: context 8, split seed 42
    set_op_threads(old, len(data.vocab))
    print(f"time to dev loss <= {args.target} on {data.path}; {os.cpu_count()} CPU cores; load average "
          f"{os.getloadavg()[0]:.2f}\n", flush=True)

    full = {}
    if not args.skip_full:
        with tempfile.TemporaryDirectory(prefix="kmlp-bench-best-") as tmp:
            for label, config in ((old_label, old), (new_label, new)):
                full[label] = full_run(label, config, data, Path(tmp), args.target)
        print()

    print(f"step cost side by side: {args.rounds} rounds of {args.chunk} steps of each, alternated "
          f"({old_label} | {new_label})")
    (old_wall, new_wall), (old_cpu, new_cpu) = alternated_step_rates([old, new], data, args.chunk, args.rounds)
    print(f"  median: {old_wall:.1f} | {new_wall:.1f} steps/s, {old_cpu:.2f} | {new_cpu:.2f} steps per CPU-second")
    print(f"  a step of the new recipe costs {old_wall / new_wall:.2f} of the old one's in wall time, "
          f"{old_cpu / new_cpu:.2f} in CPU time; load average {os.getloadavg()[0]:.2f}\n")

    if not full:
        return 0
    missing = [label for label, f in full.items() if not f["reached"]]
    if missing:
        print(f"verdict: dev loss <= {args.target} not reached by {', '.join(missing)}")
        return 0
    old_full, new_full = full[old_label], full[new_label]
    (old_seconds, old_cpu_seconds, old_steps, _) = old_full["reached"]
    (new_seconds, new_cpu_seconds, new_steps, _) = new_full["reached"]

    def at_rates(old_rate, new_rate):  # evaluations and backups added at the share each full run had
        return ((new_steps / new_rate) / (1 - new_full["overhead"])) / ((old_steps / old_rate) / (1 - old_full["overhead"]))

    print(f"time to dev loss <= {args.target}, new over old:")
    print(f"  full runs: {new_seconds / old_seconds:.2f} in wall time ({new_seconds:.0f} s against "
          f"{old_seconds:.0f} s, each under the load it met), {new_cpu_seconds / old_cpu_seconds:.2f} in CPU time")
    print(f"  steps each needed ({new_steps:,} against {old_steps:,}) at the alternated step costs: "
          f"{at_rates(old_wall, new_wall):.2f} in wall time, {at_rates(old_cpu, new_cpu):.2f} in CPU time")
    ratio = new_seconds / old_seconds
    print(f"verdict: {'at most' if ratio <= 0.5 else 'more than'} half the time to dev loss <= {args.target} "
          f"({ratio:.2f} in wall time, full runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
