"""Training speed of kmlp against the lecture's PyTorch loop.

Throughput (default): the lecture's recipe (block_size 3, n_embd 10, n_hidden 200, batch 32, SGD at
0.1 then 0.01 for the second half) for --steps steps, --repeats times each, trained

  * with kmlp, through the documented API: ``kmlp.train(Config(...))``, which is what
    ``kmlp train --preset lecture`` runs (tf.data pipeline, ``model.fit``, XLA-compiled steps);
  * with the lecture's plain PyTorch loop (benchmarks/torch_lecture.py) on the same splits.

It prints steps/s (median of the repeats; compile or warm-up time apart), the final dev loss of
each, and the ratio kmlp / PyTorch.

    python benchmarks/bench_train.py                          # 200,000 steps, 3 repeats
    python benchmarks/bench_train.py --steps 20000 --repeats 1

Time to quality (--time-to-quality): wall-clock seconds of whole ``kmlp train --preset fast --quiet``
processes (start-up, imports, data, training, saving and the sampled names at the end included;
median of --runs), with the dev loss each reached, and for reference the seconds the PyTorch
lecture loop needs until its dev loss first falls to --target (dev evaluated every --eval-every
steps, evaluation time not counted), or its whole run if it never does.

    python benchmarks/bench_train.py --time-to-quality

PyTorch runs with ``torch.set_num_threads(--torch-threads)``, 1 by default: on a 2-core machine its
default of 2 intra-op threads makes these tiny matrix products several times slower, not faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # torch_lecture, beside this file

from kmlp.utils.quiet import silence_tensorflow  # noqa: E402

TARGET = 2.17


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Throughput


def lecture_config(steps: int, seed: int):
    """The lecture's recipe for ``steps`` steps, cut in half way, with ``seed`` for kmlp's run (the
    names are split as every kmlp run splits them, by ``split_seed``, whatever the seed)."""
    from kmlp.config import preset

    return preset("lecture").replace(steps=steps, decay_at=[steps // 2], seed=seed)


def lecture_data(data_path, seed: int):
    """The splits and examples kmlp's run trains on, for the PyTorch loop."""
    from kmlp.data.pipeline import NamesData

    return NamesData.for_config(data_path, lecture_config(2, seed))


def kmlp_run(steps: int, data_path, workdir: Path, seed: int):
    """One lecture-recipe run through ``kmlp.train``; returns (metrics, FitTimer)."""
    import keras

    from kmlp.training.train import train

    class FitTimer(keras.callbacks.Callback):
        """Times fit's compiled training calls: the first one (tracing, XLA compilation and its
        steps) apart from the rest. Dev evaluations, backups and logs between epochs are not
        training calls; they are counted in ``fit_seconds`` only."""

        def on_train_begin(self, logs=None):
            self.began = time.perf_counter()
            self.first_call = None
            self.call_seconds = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.step_began = time.perf_counter()
            self.steps_before = int(self.model.optimizer.iterations.numpy())

        def on_train_batch_end(self, batch, logs=None):
            seconds = time.perf_counter() - self.step_began
            if self.first_call is None:
                self.first_call = seconds
                self.first_steps = int(self.model.optimizer.iterations.numpy()) - self.steps_before
            else:
                self.call_seconds += seconds

        def on_train_end(self, logs=None):
            self.fit_seconds = time.perf_counter() - self.began
            self.steps = int(self.model.optimizer.iterations.numpy())

        @property
        def steps_per_second(self) -> float:
            return (self.steps - self.first_steps) / self.call_seconds

    config = lecture_config(steps, seed)
    timer = FitTimer()
    result = train(config, data_path=data_path, out_dir=workdir / f"kmlp-{time.monotonic_ns()}",
                   preset_name="lecture", callbacks=[timer], verbose=0, log=lambda *_: None)
    return result, timer


def throughput(args) -> int:
    silence_tensorflow()
    use_torch = not args.skip_torch and torch_available()
    if not args.skip_torch and not use_torch:
        print("torch is not installed: PyTorch part skipped (pip install -e '.[bench]')")
    if use_torch:  # the same splits and example arrays that kmlp trains on
        data = lecture_data(args.data, args.seed)
    print(f"lecture recipe: {args.steps:,} steps at batch 32, SGD 0.1 -> 0.01 at step "
          f"{args.steps // 2:,}; {args.repeats} repeat(s); {os.cpu_count()} CPU cores; load average "
          f"{os.getloadavg()[0]:.2f}")
    if use_torch:
        print(f"PyTorch: torch.set_num_threads({args.torch_threads})")

    kmlp_rates, kmlp_compile, kmlp_dev = [], [], []
    torch_rates, torch_warmup, torch_dev = [], [], []
    with tempfile.TemporaryDirectory(prefix="kmlp-bench-") as tmp:
        for r in range(args.repeats):  # alternate, so both see much the same load
            result, timer = kmlp_run(args.steps, args.data, Path(tmp), args.seed)
            kmlp_rates.append(timer.steps_per_second)
            kmlp_compile.append(timer.first_call)
            kmlp_dev.append(result.metrics["dev_loss"])
            print(f"  kmlp    run {r + 1}: {timer.steps_per_second:8,.0f} steps/s  first call "
                  f"{timer.first_call:.2f} s ({timer.first_steps} steps, includes compile)  "
                  f"dev loss {result.metrics['dev_loss']:.4f}  (whole fit {timer.fit_seconds:.1f} s, "
                  f"{timer.steps / timer.fit_seconds:,.0f} steps/s with dev evaluations and backups)",
                  flush=True)
            if use_torch:
                from torch_lecture import train_lecture

                t = train_lecture(data, steps=args.steps, threads=args.torch_threads)
                torch_rates.append(t.steps_per_second)
                torch_warmup.append(t.warmup_seconds)
                torch_dev.append(t.dev_loss)
                print(f"  PyTorch run {r + 1}: {t.steps_per_second:8,.0f} steps/s  warm-up "
                      f"{t.warmup_seconds:.2f} s ({t.warmup_steps} steps)  dev loss {t.dev_loss:.4f}",
                      flush=True)

    med = statistics.median
    print(f"\n{'':8} {'steps/s':>10} {'compile/warm-up':>16} {'dev loss':>9}")
    print(f"{'kmlp':8} {med(kmlp_rates):10,.0f} {med(kmlp_compile):14.2f} s {med(kmlp_dev):9.4f}")
    if use_torch:
        print(f"{'PyTorch':8} {med(torch_rates):10,.0f} {med(torch_warmup):14.2f} s {med(torch_dev):9.4f}")
        print(f"\nkmlp / PyTorch: {med(kmlp_rates) / med(torch_rates):.2f}x steps/s; dev loss "
              f"difference {med(kmlp_dev) - med(torch_dev):+.4f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


# ---------------------------------------------------------------------------------------------
# Time to quality


def time_to_quality(args) -> int:
    print(f"time to dev loss <= {args.target}: whole `kmlp train --preset {args.preset}` processes, "
          f"{args.runs} run(s); load average {os.getloadavg()[0]:.2f}")
    walls, devs = [], []
    with tempfile.TemporaryDirectory(prefix="kmlp-bench-") as tmp:
        for r in range(args.runs):
            out = Path(tmp) / f"run{r}"
            # exactly what a user runs, the 10 sampled names at the end included
            command = [sys.executable, "-m", "kmlp", "train", "--preset", args.preset, "--out", str(out),
                       "--quiet"]
            if args.data:
                command += ["--data", str(args.data)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                print(done.stdout + done.stderr)
                return 1
            metrics = json.loads((out / "metrics.json").read_text())
            walls.append(wall)
            devs.append(metrics["dev_loss"])
            print(f"  kmlp run {r + 1}: {wall:.2f} s whole process ({metrics['seconds']:.2f} s in fit, "
                  f"{metrics['steps']:,} steps at batch {metrics['batch_size']})  dev loss "
                  f"{metrics['dev_loss']:.4f}", flush=True)
    wall, dev = statistics.median(walls), statistics.median(devs)
    verdict = "reached" if max(devs) <= args.target else "NOT reached in every run"
    print(f"kmlp --preset {args.preset}: {wall:.2f} s (median), dev loss {dev:.4f}; target {verdict}")

    if args.skip_torch or not torch_available():
        if not args.skip_torch:
            print("torch is not installed: PyTorch part skipped (pip install -e '.[bench]')")
        return 0
    from torch_lecture import train_lecture

    data = lecture_data(args.data, args.seed)
    t = train_lecture(data, steps=args.steps, threads=args.torch_threads, eval_every=args.eval_every,
                      target=args.target)
    if args.target in t.reached:
        step, seconds = t.reached[args.target]
        print(f"PyTorch lecture loop ({args.steps:,} steps, {args.torch_threads} thread(s)): dev loss "
              f"<= {args.target} first at step {step:,}, after {seconds:.1f} s of training "
              f"(dev checked every {args.eval_every:,} steps); final dev loss {t.dev_loss:.4f} after "
              f"{t.warmup_seconds + t.seconds:.1f} s")
    else:
        print(f"PyTorch lecture loop ({args.steps:,} steps, {args.torch_threads} thread(s)): dev loss "
              f"never <= {args.target}; final {t.dev_loss:.4f} after {t.warmup_seconds + t.seconds:.1f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200_000,
                   help="optimizer steps per run of the lecture recipe (default 200000)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side; steps/s is their median "
                   "(default 3)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads for the PyTorch loop (default 1, fastest on 2 cores)")
    p.add_argument("--skip-torch", action="store_true", help="measure kmlp only")
    p.add_argument("--data", metavar="PATH", help="names file (default: kmlp's data/names.txt)")
    p.add_argument("--seed", type=int, default=42, help="seed for kmlp's run (initial weights, minibatch "
                   "order; default 42); both loops train on kmlp's split, --split-seed 42")
    p.add_argument("--time-to-quality", action="store_true",
                   help="measure whole `kmlp train --preset fast` processes to --target dev loss instead")
    p.add_argument("--preset", default="fast", help="preset for --time-to-quality (default fast)")
    p.add_argument("--runs", type=int, default=3, help="processes for --time-to-quality (default 3)")
    p.add_argument("--target", type=float, default=TARGET, help=f"dev loss to reach (default {TARGET})")
    p.add_argument("--eval-every", type=int, default=5000,
                   help="PyTorch steps between dev evaluations for --time-to-quality (default 5000)")
    args = p.parse_args(argv)
    for name in ("steps", "repeats", "runs", "torch_threads", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    return time_to_quality(args) if args.time_to_quality else throughput(args)


if __name__ == "__main__":
    sys.exit(main())
