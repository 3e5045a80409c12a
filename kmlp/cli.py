"""The ``kmlp`` command: a thin layer over the Python API.

    kmlp train [--preset NAME] [flags]        train a model, save it, print sampled names
    kmlp evaluate DIR --split test            loss of a saved model on one split
    kmlp sample DIR -n 20 --seed 1            names sampled from a saved model
    kmlp score DIR emma zoe                   log-likelihood of names under a saved model
    kmlp export DIR                           SavedModel for TensorFlow Serving in DIR/export/N
    kmlp tune --max-minutes 30 --out DIR      hyperparameter search on the dev split (KerasTuner)
    kmlp lr-find --preset lecture --json      learning-rate range test and a suggested rate

Every error in the input (files, flags, saved models, output folders) ends in a one-line message,
``kmlp: error: ...``, and exit status 2; flags and files are checked before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ._quiet import silence_tensorflow


class UsageError(ValueError):
    """A flag's value is wrong."""


class Parser(argparse.ArgumentParser):
    """argparse, with its mistakes raised as :class:`UsageError` (one line, from :func:`main`) instead
    of a usage block and exit; subcommand parsers are made of the same class."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, docker stop, a scheduler), handled like Ctrl-C."""


# ---------------------------------------------------------------------------------------------
# train


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Data, model and optimisation flags, shared by every command that builds and trains a model."""
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="names file, one per line (default: data/names.txt, "
                   "downloaded and verified if missing)")
    g.add_argument("--seed", type=int, help="seed for initial weights, dropout and data order (default 42)")
    g.add_argument("--split-seed", type=int, help="seed that picks which names go to train/dev/test "
                   "(default 42; keep it to compare runs)")
    g = p.add_argument_group("configuration (flags override --config, which overrides --preset)")
    g.add_argument("--preset", help="named configuration: lecture (the lecture's recipe, exactly), default "
                   "(the best that trains in about 3 minutes), fast (dev loss 2.17 in seconds), best "
                   "(lowest dev loss within 10 minutes) (default: default)")
    g.add_argument("--config", metavar="FILE", help="JSON configuration, e.g. written by kmlp tune")
    g = p.add_argument_group("model")
    g.add_argument("--block-size", type=int, help="characters of context (lecture: 3)")
    g.add_argument("--n-embd", type=int, help="embedding size per character (lecture: 10)")
    g.add_argument("--n-hidden", type=int, help="units in each hidden tanh layer (lecture: 200)")
    g.add_argument("--n-layers", type=int, help="number of hidden tanh layers (lecture: 1)")
    g.add_argument("--dropout", type=float, help="dropout rate after each hidden layer (default 0)")
    g.add_argument("--rdrop", type=float, metavar="WEIGHT",
                   help="R-Drop: run each minibatch twice with different dropout masks and add WEIGHT "
                        "times the symmetric KL divergence between the two predictions to the loss; "
                        "about twice the time per step (default 0: off)")
    g.add_argument("--norm", choices=["none", "batch", "layer"], help="normalisation before each tanh")
    g.add_argument("--init", choices=["glorot", "normal"],
                   help="initial dense weights: glorot (default) or normal, N(0, 1) as in the lecture")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help="examples per optimizer step (lecture: 32)")
    g.add_argument("--steps", type=int, help="optimizer steps (lecture: 200000)")
    g.add_argument("--epochs", type=int, help="passes over the train split, instead of --steps")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="optimizer (lecture: sgd)")
    g.add_argument("--lr", type=float, help="initial learning rate (lecture: 0.1)")
    g.add_argument("--weight-decay", type=float,
                   help="decoupled weight decay, applied by every optimizer (adam with it is adamw; "
                        "0 for none)")
    g.add_argument("--decay-at", metavar="STEPS", type=_step_list,
                   help="comma-separated steps at which the rate is multiplied by --decay-factor "
                        "(lecture: 100000); 'none' for a constant rate")
    g.add_argument("--decay-factor", type=float, help="factor applied at each --decay-at step (lecture: 0.1)")
    g.add_argument("--schedule", choices=["step", "cosine"],
                   help="step: cut at --decay-at (default); cosine: half a cosine from --lr down to 0")
    g.add_argument("--plateau-patience", type=int, metavar="N",
                   help="also multiply the rate by --decay-factor whenever dev loss has not improved "
                        "for N evaluations (default 0: off)")
    g.add_argument("--steps-per-call", type=int,
                   help="optimizer steps run per compiled call (default: chosen to fit steps and milestones)")
    g.add_argument("--no-jit", dest="jit_compile", action="store_const", const=False,
                   help="do not compile the training step with XLA")


def _step_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts, got {text!r}") from None


def config_from_args(args):
    """Config = preset, then the options --config FILE sets, then every flag given on the command line."""
    from .config import Config, load_config_file, preset

    config = preset(args.preset or "default")
    if args.config:
        config = load_config_file(args.config, base=config)
    names = [f for f in Config.__dataclass_fields__ if getattr(args, f, None) is not None]
    config = config.replace(**{f: getattr(args, f) for f in names})
    if args.epochs is not None:
        config = config.replace(steps=None)
    return config.validate()


def cmd_train(args) -> int:
    from .data import NamesData
    from .runs import check_out_dir, default_run_dir

    config = config_from_args(args)
    if args.samples < 0:
        raise UsageError(f"--samples must be 0 or more, got {args.samples}")
    if args.devices < 0:
        raise UsageError(f"--devices must be 0 (as the machine has them) or more, got {args.devices}")
    # Flags, output folder and data are checked before TensorFlow loads, so mistakes show at once.
    out = check_out_dir(args.out or default_run_dir(args.preset or "default"))
    data = NamesData.for_config(args.data, config)

    from .sample import sample_names
    from .train import make_strategy, train

    strategy = make_strategy(args.strategy, devices=args.devices)
    result = train(config, data=data, out_dir=out, preset_name=args.preset or "default",
                   verbose=0 if args.quiet else 2, resume=args.resume, strategy=strategy)
    if args.samples:
        print(f"\n{args.samples} names sampled from the model:")
        for name in sample_names(result.model, result.data.vocab, args.samples, seed=config.seed):
            print(" ", name)
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a names file and save it",
                       description="Train the MLP with model.fit on the train split, validating on dev; "
                                   "save the model, configuration, history and metrics to --out.")
    add_model_flags(p)
    p.add_argument("--out", metavar="DIR", help="run directory to write (default: saved_models/<preset>); "
                   "new, empty, or an earlier run, which is replaced (its exports are kept)")
    p.add_argument("--samples", type=int, default=10, help="names to sample and print at the end (default 10)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    g = p.add_argument_group("faults and devices")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last completed epoch "
                        "(backed up in a hidden folder beside --out); starts afresh if there is none")
    g.add_argument("--strategy", choices=["default", "mirrored"], default="default",
                   help="default: one device; mirrored: a model copy per local device (GPUs, else the "
                        "--devices logical CPUs), each minibatch split between them")
    g.add_argument("--devices", type=int, default=0,
                   help="split the CPU into this many logical devices (to run --strategy mirrored "
                        "without GPUs; default 0: devices as they are)")
    p.set_defaults(func=cmd_train)


# ---------------------------------------------------------------------------------------------
# evaluate


def cmd_evaluate(args) -> int:
    import math

    from .data import NamesData, file_sha256
    from .runs import RunError, RunLock, add_evaluation, load_run, update_metrics

    run = load_run(args.run_dir)
    with RunLock(run.path):  # checks the run can be written before the work
        path = _data_file(run, args.data)
        data = NamesData.for_config(path, run.config, vocab=run.vocab)
        from .train import EVAL_BATCH, evaluate_loss

        loss = evaluate_loss(run.model, data.dataset(args.split, EVAL_BATCH, shuffle=False))
        figures = {"loss": loss, "perplexity": math.exp(loss), "bits_per_char": loss / math.log(2)}
        digest = file_sha256(path)
        own = digest == run.info.get("data_sha256") if run.info.get("data_sha256") else \
            path.resolve() == (run.data_path or path).resolve()  # runs from before the hash was kept
        print(f"{args.split} loss {loss:.4f}, perplexity {figures['perplexity']:.3f}, "
              f"{figures['bits_per_char']:.4f} bits per character ({data.num_examples(args.split):,} "
              f"examples, {len(data.words[args.split]):,} names" + ("" if own else f" of {path}") + ")")
        try:
            if own:
                update_metrics(run.path, **{f"{args.split}_{k}": v for k, v in figures.items()})
                where = run.path / "metrics.json"
            else:  # another file's split: recorded apart, never over the run's own figures
                add_evaluation(run.path, {"data": str(path.resolve()), "data_sha256": digest,
                                          "split": args.split, **figures,
                                          "examples": data.num_examples(args.split)})
                where = run.path / "evaluations.json"
        except OSError as e:
            raise RunError(f"{e.filename or run.path}: cannot be written ({e.strerror or e}); the "
                           f"figures above were not recorded") from None
    print(f"recorded in {where}")
    return 0


def _data_file(run, data_flag):
    """The names file to read for ``run``: ``--data`` if given, else the file it was trained on."""
    from pathlib import Path

    from .runs import RunError

    if data_flag:
        return Path(data_flag)
    if run.data_path is None:
        raise RunError(f"{run.path / 'config.json'} names no data file; pass --data PATH")
    if not run.data_path.exists():
        raise RunError(f"{run.path}: trained on {run.data_path}, which is missing; pass --data PATH")
    return run.data_path


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="loss of a saved model on a split (test: only at the very end)",
                       description="Loss (mean cross-entropy per character, the end of a name counted as "
                                   "one), perplexity and bits per character on one split, recorded in "
                                   "metrics.json; on another names file (--data), in evaluations.json "
                                   "with the file and its SHA-256.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("--split", choices=["train", "dev", "test"], default="dev", help="which split (default dev)")
    p.add_argument("--data", metavar="PATH", help="names file (default: the one the model was trained on)")
    p.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------------------------------------
# sample


def cmd_sample(args) -> int:
    import json
    import math

    import numpy as np

    from .runs import load_run
    from .sample import MAX_LEN, NameModel, where_found

    max_len = MAX_LEN if args.max_len is None else args.max_len
    if args.num < 1:
        raise UsageError(f"-n/--num must be a positive integer, got {args.num}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UsageError(f"--temperature must be a positive number, got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be 0 (all characters) or more, got {args.top_k}")
    if max_len < 1:
        raise UsageError(f"--max-len must be a positive integer, got {max_len}")
    run = load_run(args.run_dir)
    lm = NameModel(run.model, run.vocab)
    try:
        lm.check(args.prefix, "--prefix")
    except ValueError as e:
        raise UsageError(str(e)) from None
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    names = lm.sample(args.num, seed=seed, temperature=args.temperature, top_k=args.top_k,
                      prefix=args.prefix, max_len=max_len)
    splits, unavailable = _run_splits(run, args.data)
    marks = where_found(names, splits) if splits else [None] * len(names)
    new = sum(m == "new" for m in marks)
    if args.json:
        print(json.dumps({
            "seed": seed, "temperature": args.temperature, "top_k": args.top_k, "prefix": args.prefix,
            "names": [{"name": n, "found_in": m} for n, m in zip(names, marks)],
            "new_share": new / len(names) if splits else None,
            "marks_unavailable": unavailable,
        }, indent=2, ensure_ascii=False))
        return 0
    width = max(map(len, names))
    for name, mark in zip(names, marks):
        print(f"{name:<{width}}  {mark}" if mark else name)
    if splits:
        seen = {split: sum(m == split for m in marks) for split in ("train", "dev", "test")}
        print(f"new: {new} of {len(names)} ({new / len(names):.0%}); in train {seen['train']}, "
              f"in dev/test {seen['dev'] + seen['test']}")
    else:
        print(f"kmlp: train/dev/test marks unavailable: {unavailable}", file=sys.stderr)
    return 0


def _run_splits(run, data_path):
    """The run's train/dev/test names, from --data or the file it was trained on, and why not if not."""
    from .data import DataError, NamesData

    path = data_path or run.info.get("data")
    if not path:
        return None, f"{run.path / 'config.json'} names no data file; pass --data PATH"
    try:
        data = NamesData.for_config(path, run.config, vocab=run.vocab)
    except DataError as e:
        if data_path:  # asked for explicitly: an error, not a note
            raise
        return None, str(e)
    return data.words, None


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="print names sampled from a saved model",
                       description="Sample names in one batched, in-graph loop and mark each as found "
                                   "in the run's train split, in dev/test, or new.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("-n", "--num", type=int, default=20, help="how many names (default 20)")
    p.add_argument("--seed", type=int, help="random seed; the same seed gives the same names")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divides the logits: below 1 safer, more common names; above 1 wilder (default 1)")
    p.add_argument("--top-k", type=int, default=0,
                   help="draw only among the k likeliest next characters; 1 always takes the likeliest, "
                        "0 (default) considers all")
    p.add_argument("--prefix", default="", help="letters every name starts with")
    p.add_argument("--max-len", type=int,
                   help="characters generated at most per name; longer ones are cut (default 50)")
    p.add_argument("--data", metavar="PATH",
                   help="names file that marks train/dev/test (default: the one the model was trained on)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_sample)


# ---------------------------------------------------------------------------------------------
# score


def cmd_score(args) -> int:
    import json

    from .runs import load_run
    from .sample import NameModel

    run = load_run(args.run_dir)
    lm = NameModel(run.model, run.vocab)
    bad = [n for n in args.names if run.vocab.unknown(n)]
    if bad:
        details = "; ".join(f"{n!r} has {''.join(run.vocab.unknown(n))!r}" for n in bad)
        raise UsageError(f"names with characters outside the model's vocabulary: {details} "
                         f"(it knows {''.join(run.vocab.chars)!r})")
    scores = lm.score(args.names)
    rows = [{"name": n, "log_likelihood": total, "per_char": total / tokens, "tokens": tokens}
            for n, (total, tokens) in zip(args.names, scores)]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    width = max(4, *map(len, args.names))
    print(f"{'name':<{width}}  {'log-lik':>8}  {'per char':>8}  tokens")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['log_likelihood']:8.3f}  {r['per_char']:8.3f}  {r['tokens']:6d}")
    return 0


def add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="log-likelihood of names under a saved model",
                       description="Log-likelihood in nats of each name under the model: the total, "
                                   "and per token counting the end of the name (so it compares with "
                                   "the loss). Any name with a character outside the vocabulary "
                                   "stops the command (exit 2) before anything is scored.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("names", metavar="NAME", nargs="+", help="names to score")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_score)


# ---------------------------------------------------------------------------------------------
# export


def cmd_export(args) -> int:
    from .export import ExportError, export_run
    from .runs import load_run

    run = load_run(args.run_dir)
    try:
        path = export_run(run, version=args.version)
    except ExportError as e:
        raise UsageError(str(e)) from None
    print(f"SavedModel written to {path}")
    print("signatures: serving_default (context -> next-character probabilities), generate, "
          "generate_with_prefix, score")
    print(f"inspect it with: saved_model_cli show --dir {path} --all")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a TensorFlow SavedModel for serving",
                       description="Write the model, its vocabulary and its sampling and scoring "
                                   "functions as a SavedModel to DIR/export/<version>/, the layout "
                                   "TensorFlow Serving loads.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("--version", type=int,
                   help="version folder number (default: one more than the highest there); "
                        "an existing version is never replaced")
    p.set_defaults(func=cmd_export)


# ---------------------------------------------------------------------------------------------
# tune


def cmd_tune(args) -> int:
    from .config import check_search
    from .runs import check_out_dir

    check_search(args.max_trials, args.max_minutes, args.steps, args.seed, args.algorithm)
    from .tune import OUT_ENTRIES, tune

    check_out_dir(args.out, own_entries=OUT_ENTRIES, is_own=lambda path: True, what="search results")
    result = tune(data_path=args.data, out_dir=args.out, max_trials=args.max_trials,
                  max_minutes=args.max_minutes, steps=args.steps, seed=args.seed,
                  algorithm=args.algorithm)
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
                                   "results.md and the best configuration, best_config.json, to --out.")
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
    p.set_defaults(func=cmd_tune)


# ---------------------------------------------------------------------------------------------
# lr-find


def cmd_lr_find(args) -> int:
    import json

    from .config import check_range_test
    from .data import NamesData
    from .runs import check_out_dir

    config = config_from_args(args)
    check_range_test(args.start_lr, args.end_lr, args.num_steps)
    check_out_dir(args.out, own_entries={"lr_find.csv", "lr_find.png", "logs"}, is_own=lambda path: True,
                  what="range test results")
    data = NamesData.for_config(args.data, config)
    from .lr_find import range_test

    result, csv_path, plot_path = range_test(config, data, start_lr=args.start_lr, end_lr=args.end_lr,
                                             num_steps=args.num_steps, out_dir=args.out)
    if args.json:
        print(json.dumps({**result.to_json(), "csv": str(csv_path), "plot": str(plot_path)}, indent=2))
        return 0
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
    print(f"wrote {csv_path} and {plot_path}")
    return 0


def add_lr_find_parser(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: the loss against the rate, and a "
                                       "suggested rate",
                       description="Train a fresh model for --num-steps minibatches at rates rising "
                                   "exponentially from --start-lr to --end-lr (stopping if the loss "
                                   "diverges), then suggest half the rate at the floor of the loss curve. "
                                   "Writes lr_find.csv and lr_find.png to --out.")
    add_model_flags(p)
    g = p.add_argument_group("range test")
    g.add_argument("--start-lr", type=float, default=1e-3, help="first rate tried (default 0.001)")
    g.add_argument("--end-lr", type=float, default=1.0, help="last rate tried (default 1)")
    g.add_argument("--num-steps", type=int, default=1000,
                   help="minibatches, one per rate (default 1000, as in the lecture)")
    g.add_argument("--out", metavar="DIR", default="saved_models/lr_find",
                   help="folder for lr_find.csv and lr_find.png (default: saved_models/lr_find)")
    g.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_lr_find)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kmlp", description="A character-level MLP language model (Bengio et al. 2003) "
                                             "for names, built with Keras.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_train_parser, add_evaluate_parser, add_sample_parser, add_score_parser,
                add_export_parser, add_tune_parser, add_lr_find_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run one command; every mistake in the input is one line on stderr and exit status 2."""
    from .config import ConfigError
    from .data import DataError
    from .runs import RunError, TrainingDiverged  # (importing kmlp.train would load TensorFlow)

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        args = build_parser().parse_args(argv)
        silence_tensorflow()
        return args.func(args)
    except (DataError, ConfigError, RunError, UsageError, TrainingDiverged) as e:
        print(f"kmlp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("kmlp: " + ("terminated" if isinstance(e, Terminated) else "interrupted"), file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
