"""The commands that train: ``kmlp train``, ``kmlp lr-find`` (the learning-rate range test) and
``kmlp tune`` (the hyperparameter search). Flags, output folders and data are checked before
TensorFlow loads, so mistakes show at once."""

from __future__ import annotations

import time

from kmlp.cli.flags import DEFAULT_MINUTES, add_model_flags, check_data_flag, configure
from kmlp.errors import UsageError
from kmlp.runs.start import FINE_TUNING
from kmlp.training.small_lists import SMALL_LIST_NAMES


def cmd_train(args) -> int:
    started = time.perf_counter()  # a --minutes budget counts from here: loading TensorFlow included
    config, naming = configure(args, train=True)
    check_train_flags(args)
    out = train_out_dir(args, config)
    data = read_data(args.data, config, naming)

    from kmlp.generation.sample import sample_names
    from kmlp.training.setup import make_strategy
    from kmlp.training.train import train

    strategy = make_strategy(args.strategy, devices=args.devices)
    result = train(config, data=data, out_dir=out, preset_name=args.preset or "default",
                   verbose=0 if args.quiet else 1, resume=args.resume, strategy=strategy, started=started)
    if args.samples:
        print(f"\n{args.samples} names sampled from the model:")
        for name in sample_names(result.model, result.data.vocab, args.samples, seed=config.seed):
            print(" ", name)
    return 0


def train_out_dir(args, config):
    """The folder ``kmlp train`` writes, checked: one kmlp may write, and not the run --from reads."""
    from kmlp.runs.folders import check_out_dir
    from kmlp.runs.rundir import default_run_dir
    from kmlp.runs.start import check_out_dir as check_not_into_start

    out = check_out_dir(args.out or default_run_dir(args.preset or "default"))
    if config.start_from:
        check_not_into_start(out, config.start_from)
    return out


def read_data(path, config, naming):
    """The names file as ``config`` sees it, refused (before TensorFlow loads) if its path cannot be
    recorded or a training of ``config`` with its vocabulary cannot fit in this machine's memory."""
    from kmlp.config import check_fits_in_memory
    from kmlp.data.pipeline import NamesData

    check_data_flag(path)
    data = NamesData.for_config(path, config)
    check_fits_in_memory(config, len(data.vocab), naming=naming)
    return data


def check_train_flags(args) -> None:
    """The flags of ``kmlp train`` that no configuration holds, and TF_CONFIG for multi-worker."""
    from kmlp.config import NAME_BYTES, check_devices, check_kept_in_memory

    if args.samples < 0:
        raise UsageError(f"--samples must be 0 or more, got {args.samples}")
    check_kept_in_memory(args.samples, NAME_BYTES, "--samples", "the names sampled at the end")
    check_devices(args.devices)
    if args.lr is not None and args.lr_passes is not None:
        raise UsageError("--lr and --lr-passes both set the learning rate; give one")
    if args.strategy == "multi-worker":
        if args.devices:
            raise UsageError("--devices applies to --strategy mirrored; each worker of --strategy "
                             "multi-worker uses its GPUs, else its CPU")
        from kmlp.training.cluster import read_tf_config

        read_tf_config()


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a names file and save it",
                       description="Train the MLP with model.fit on the train split, validating on dev; "
                                   "save the model, configuration, history and metrics to --out.")
    add_model_flags(p)
    p.add_argument("--out", metavar="DIR", help="run directory to write (default: saved_models/<preset>); "
                   "new, empty, or an earlier run, which is replaced (its exports are kept)")
    p.add_argument("--samples", type=int, default=10, help="names to sample and print at the end (default 10)")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="time budget for the whole run, evaluations and saving included: the steps are "
                        "planned from this machine's measured speed, --decay-at milestones scaled to "
                        "them; the run ends early if the machine gets slower, and metrics.json records the "
                        "--steps (and --stop-at) that repeat it exactly (default: "
                        f"{DEFAULT_MINUTES:g} when no --preset, --config, --steps or --epochs is given)")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="end the run at the end of the call that reaches this optimizer step, its "
                        "learning-rate schedule still the one planned for --steps (where a --minutes run "
                        "that fell behind its plan ended, as it records it)")
    p.add_argument("--from", dest="start_from", metavar="RUN",
                   help="start from the model of a trained run (its architecture and weights; new "
                        "characters of --data are added) and fine-tune it: unless given, --epochs "
                        f"{FINE_TUNING['epochs']} (passes over the train split, each evaluated on dev) and "
                        f"--lr-passes {FINE_TUNING['lr_passes']:g}, with early stopping; RUN is only read")
    p.add_argument("--lr-passes", type=float, metavar="RATE",
                   help="set the learning rate from the run's length, in place of --lr: RATE over the "
                        "passes over the train split the run makes (a --minutes run's as planned); the "
                        "default with --from unless --lr is given")
    p.add_argument("--early-stopping", type=int, metavar="STEPS",
                   help="stop when dev loss has not improved for STEPS optimizer steps and keep the best "
                        "weights; 0: off (default: on, for a fifth of the run, with --from and for lists of "
                        f"fewer than {SMALL_LIST_NAMES:,} train names)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line (steps done of the total, time elapsed and left, dev loss)")
    g = p.add_argument_group("faults and devices")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last completed epoch "
                        "(backed up in a hidden folder beside --out); starts afresh if there is none")
    g.add_argument("--strategy", choices=["default", "mirrored", "multi-worker"], default="default",
                   help="default: one device; mirrored: a model copy per local device (GPUs, else the "
                        "--devices logical CPUs), each minibatch split between them; multi-worker: the "
                        "same over the machines named by the TF_CONFIG environment variable (run the "
                        "same command on each; worker 0 saves the run)")
    g.add_argument("--devices", type=int, default=0,
                   help="split the CPU into this many logical devices (to run --strategy mirrored "
                        "without GPUs; default 0: devices as they are)")
    p.set_defaults(func=cmd_train)


def cmd_lr_find(args) -> int:
    import json

    from kmlp.config import check_range_test
    from kmlp.runs.folders import check_out_dir

    config, naming = configure(args)
    check_range_test(args.start_lr, args.end_lr, args.num_steps)
    check_out_dir(args.out, kind="lr_find")
    data = read_data(args.data, config, naming)
    from kmlp.training.lr_find import range_test

    result, csv_path, plot_path = range_test(config, data, start_lr=args.start_lr, end_lr=args.end_lr,
                                             num_steps=args.num_steps, out_dir=args.out)
    if args.json:
        print(json.dumps({**result.to_json(), "csv": str(csv_path), "plot": str(plot_path)}, indent=2))
    else:
        print_range_test(result, config)
        print(f"wrote {csv_path} and {plot_path}")
    return 0


def print_range_test(result, config) -> None:
    print(f"range test: {len(result.rates):,} of {result.num_steps:,} steps, lr {result.start_lr:g} "
          f"to {result.end_lr:g} ({config.optimizer}, batch {config.batch_size})")
    if result.diverged:
        print(f"stopped at lr {result.rates[-1]:.3g}: the loss diverged")
    print(f"floor of the loss curve at lr {result.floor_lr:.3g} (loss {result.floor_loss:.3f})")
    if result.floor_at_end:
        print("the loss was still falling at the largest rate tried; a higher --end-lr would show more")
    if result.floor_at_start:
        print("the loss was lowest at the smallest rates tried; a lower --start-lr would show more")
    print(f"suggested lr: {result.suggested_lr:.3g} (half the floor)")


def add_lr_find_parser(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: the loss against the rate, and a "
                                       "suggested rate",
                       description="Train a fresh model for --num-steps minibatches at rates rising "
                                   "exponentially from --start-lr to --end-lr (stopping if the loss "
                                   "diverges), then suggest half the rate at the floor of the loss curve. "
                                   "Writes lr_find.csv, lr_find.png and TensorBoard logs (logs/) to --out.")
    add_model_flags(p)
    g = p.add_argument_group("range test")
    g.add_argument("--start-lr", type=float, default=1e-3, help="first rate tried (default 0.001)")
    g.add_argument("--end-lr", type=float, default=1.0, help="last rate tried (default 1)")
    g.add_argument("--num-steps", type=int, default=1000,
                   help="minibatches, one per rate (default 1000, as in the lecture)")
    g.add_argument("--out", metavar="DIR", default="saved_models/lr_find",
                   help="folder for lr_find.csv, lr_find.png and logs/ (default: saved_models/lr_find)")
    g.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_lr_find)


def cmd_tune(args) -> int:
    from kmlp.config import check_search
    from kmlp.runs.folders import check_out_dir

    check_search(args.max_trials, args.max_minutes, args.steps, args.seed, args.algorithm, args.arch)
    check_out_dir(args.out, kind="tune")
    from kmlp.training.tune import tune

    result = tune(data_path=args.data, out_dir=args.out, max_trials=args.max_trials,
                  max_minutes=args.max_minutes, steps=args.steps, seed=args.seed,
                  algorithm=args.algorithm, arch=args.arch)
    print(f"{len(result.rows)} trials; table in {result.out_dir / 'results.md'}")
    if result.best is None:
        print("no trial completed, so no best_config.json was written")
        return 1
    print(f"best dev loss {result.best['dev_loss']:.4f} (trial {result.best['trial']}, "
          f"{result.best['steps']:,} steps); train it in full ({result.best_config.steps:,} steps) with:\n"
          f"  kmlp train --config {result.out_dir / 'best_config.json'} --out saved_models/tuned")
    return 0


def add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="search hyperparameters with KerasTuner, scored on the dev split",
                       description="Train one configuration per trial for --steps steps and score it "
                                   "by its dev loss (the test split is never read); write results.csv, "
                                   "results.md, the best configuration, best_config.json, and each "
                                   "trial's TensorBoard logs (logs/) to --out.")
    p.add_argument("--data", metavar="PATH", help="names file, one per line (default: data/names.txt)")
    p.add_argument("--seed", type=int, default=42, help="seed for the models and the search (default 42; "
                   "the split is always the one kmlp train uses by default)")
    p.add_argument("--out", metavar="DIR", default="tuning", help="folder for the results (default: tuning)")
    p.add_argument("--max-trials", type=int, default=20, help="configurations to try at most (default 20)")
    p.add_argument("--max-minutes", type=float, default=60.0,
                   help="time budget: no trial starts after it, and the one running is stopped and "
                        "counted as failed (default 60)")
    p.add_argument("--steps", type=int, default=4000,
                   help="optimizer steps per trial; Hyperband also runs trials of 1/9 and 1/3 of them "
                        "(default 4000)")
    p.add_argument("--algorithm", choices=["hyperband", "random"], default="hyperband",
                   help="how trials are chosen: KerasTuner's Hyperband (many short trials, the best "
                        "ones trained longer) or random search (default hyperband)")
    p.add_argument("--arch", choices=["mlp", "hierarchical"], default="mlp",
                   help="the model family searched: mlp (context, layers, widths; the default) or "
                        "hierarchical (positions fused per level, levels, widths)")
    p.set_defaults(func=cmd_tune)

