"""The ``kmlp`` command: a thin layer over the Python API.

    kmlp train [--preset NAME] [flags]        train a model, save it, print sampled names
    kmlp evaluate DIR --split test            loss, perplexity, bits per character on one split
    kmlp sample DIR -n 20 --seed 1            names sampled from a saved model
    kmlp score DIR emma zoe                   log-likelihood of names under a saved model (or --file)
    kmlp export DIR [--format litert]         SavedModel for TensorFlow Serving in DIR/export/N
                                              (or model.tflite for LiteRT in DIR/litert/N)
    kmlp tune --max-minutes 30 --out DIR      hyperparameter search on the dev split (KerasTuner)
    kmlp lr-find --preset lecture --json      learning-rate range test and a suggested rate
    kmlp serve DIR --port 8501                TensorFlow Serving's REST API and a playground page

Every error in the input (files, flags, saved models, output folders) ends in a one-line message,
``kmlp: error: ...``, and exit status 2; flags and files are checked before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

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
                   "(the recipe of best in float32, 4,500 steps), fast (dev loss under 2.17 in seconds), best "
                   "(dev loss under 1.95 in the least time found; bfloat16 products) (default: default)")
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
    g.add_argument("--precision", choices=["float32", "mixed_bfloat16"],
                   help="float32 (default), or mixed_bfloat16: float32 weights, logits and loss, bfloat16 "
                        "matrix products (faster on CPUs with bfloat16 instructions, with --no-jit)")
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
    g.add_argument("--jit", dest="jit_compile", action="store_const", const=True,
                   help="compile the training step with XLA (the default, but not in the best and fast presets)")
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
    if args.steps is not None or args.epochs is not None:  # a length flag replaces a file's --minutes
        config = config.replace(minutes=None)
    return config.validate()


# How long `kmlp train` trains when nothing says how long: a time budget, so that a newcomer's first
# run ends in the same time on any machine (a number of steps takes what the machine makes of it).
DEFAULT_MINUTES = 3.0


def train_config_from_args(args):
    """:func:`config_from_args`, with the length rules of ``kmlp train``: ``--minutes`` or
    ``--steps``/``--epochs``, never both; with no --preset, --config or length at all,
    :data:`DEFAULT_MINUTES`."""
    if args.minutes is not None and (args.steps is not None or args.epochs is not None):
        raise UsageError("--minutes and --steps/--epochs both set how long the run trains; give one "
                         "(a --minutes run records in metrics.json the --steps that repeat it exactly)")
    config = config_from_args(args)
    if args.minutes is None and args.steps is None and args.epochs is None and args.preset is None \
            and args.config is None:
        return config.replace(minutes=DEFAULT_MINUTES).validate()
    return config


def cmd_train(args) -> int:
    started = time.perf_counter()  # a --minutes budget counts from here: loading TensorFlow included
    from .data import NamesData
    from .runs import check_out_dir, default_run_dir

    config = train_config_from_args(args)
    if args.samples < 0:
        raise UsageError(f"--samples must be 0 or more, got {args.samples}")
    if args.devices < 0:
        raise UsageError(f"--devices must be 0 (as the machine has them) or more, got {args.devices}")
    if args.strategy == "multi-worker":
        if args.devices:
            raise UsageError("--devices applies to --strategy mirrored; each worker of --strategy "
                             "multi-worker uses its GPUs, else its CPU")
        from .cluster import read_tf_config

        read_tf_config()
    # Flags, output folder and data are checked before TensorFlow loads, so mistakes show at once.
    out = check_out_dir(args.out or default_run_dir(args.preset or "default"))
    data = NamesData.for_config(args.data, config)

    from .sample import sample_names
    from .train import make_strategy, train

    strategy = make_strategy(args.strategy, devices=args.devices)
    result = train(config, data=data, out_dir=out, preset_name=args.preset or "default",
                   verbose=0 if args.quiet else 1, resume=args.resume, strategy=strategy, started=started)
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
    p.add_argument("--minutes", type=float, metavar="M",
                   help="time budget for the whole run, evaluations and saving included: the steps are "
                        "planned from this machine's measured speed, --decay-at milestones scaled to "
                        "them, and metrics.json records the --steps that repeat the run exactly (default: "
                        f"{DEFAULT_MINUTES:g} when no --preset, --config, --steps or --epochs is given)")
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
              f"examples, {data.num_names(args.split):,} names" + ("" if own else f" of {path}") + ")")
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

    from .drawing import Sampling, check_count, pick_seed

    # Flags are checked before TensorFlow loads, so mistakes are reported at once.
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        prefix=args.prefix, min_len=args.min_len, max_len=args.max_len).check()
    num, seed = check_count(args.num), pick_seed(args.seed)

    from .runs import load_run
    from .sample import NameModel, split_index

    run = load_run(args.run_dir)
    lm = NameModel(run.model, run.vocab)
    sampling.check(run.vocab.chars)  # the prefix against the vocabulary, before the data is read
    splits, unavailable = run.splits(args.data)
    if args.new and not splits:
        raise UsageError(f"--new needs the names the model was trained on: {unavailable}")
    split_of = split_index(splits) if splits else {}
    names = lm.stream(num, seed, unique=args.unique, exclude=split_of if args.new else None,
                      **sampling.to_dict())
    found = dict.fromkeys(("train", "dev", "test", "new"), 0)
    with _QuietOnClosedPipe():
        if args.json:
            head = {"seed": seed, **sampling.to_dict(), "unique": args.unique, "new": args.new}
            sys.stdout.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "names": [')
        try:
            for i, name in enumerate(names):
                mark = split_of.get(name, "new") if splits else None
                if mark:
                    found[mark] += 1
                if args.json:
                    entry = json.dumps({"name": name, "found_in": mark}, ensure_ascii=False)
                    sys.stdout.write(("," if i else "") + "\n  " + entry)
                else:
                    sys.stdout.write(f"{name:<{NAME_WIDTH}}  {mark}\n" if mark else name + "\n")
        finally:  # also when --unique/--new fall short: the names found so far stay readable
            total = sum(found.values())
            if args.json:
                share = found["new"] / total if splits and total else None
                sys.stdout.write(f'\n], "new_share": {json.dumps(share)}, '
                                 f'"marks_unavailable": {json.dumps(unavailable, ensure_ascii=False)}}}\n')
        if args.json:
            return 0
        if splits:
            print(f"new: {found['new']} of {total} ({found['new'] / total:.0%}); in train {found['train']}, "
                  f"in dev/test {found['dev'] + found['test']}")
        else:
            print(f"kmlp: train/dev/test marks unavailable: {unavailable}", file=sys.stderr)
    return 0


NAME_WIDTH = 16  # names are printed as drawn, so the mark column is aligned for names up to this long


class _QuietOnClosedPipe:
    """Stop without a traceback when the reader of stdout goes away (``kmlp sample -n 10**7 | head``)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            try:
                sys.stdout.flush()
                return False
            except BrokenPipeError:
                kind = BrokenPipeError
        if not issubclass(kind, BrokenPipeError):
            return False
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail again
        return True


def add_sample_parser(sub) -> None:
    from .drawing import DRAWS_PER_NAME, MAX_LEN, MAX_NAME_LENGTH, MIN_DRAWS

    p = sub.add_parser("sample", help="print names sampled from a saved model",
                       description="Sample names in batched, in-graph loops and mark each as found "
                                   "in the run's train split, in dev/test, or new. Names are printed "
                                   "as they are drawn, so -n can be as large as you like.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("-n", "--num", type=int, default=20, help="how many names (default 20)")
    p.add_argument("--seed", type=int, help="random seed from 0 to 4294967295; the same seed gives the "
                   "same names (and the first of them for a smaller -n)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divides the logits: below 1 safer, more common names; above 1 wilder (default 1)")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="draw only among the k likeliest next characters; 1 always takes the likeliest, "
                        "0 (default) considers all")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: draw only among the likeliest next characters whose "
                        "probabilities add up to P (default 1: all)")
    p.add_argument("--prefix", default="", help="letters every name starts with")
    p.add_argument("--min-len", type=int, default=0,
                   help="characters per name at least, prefix included: the end of a name is not "
                        "drawn before (default 0)")
    p.add_argument("--max-len", type=int, default=MAX_LEN,
                   help=f"characters per name at most, prefix included; longer ones are cut "
                        f"(default {MAX_LEN}, at most {MAX_NAME_LENGTH})")
    p.add_argument("--unique", action="store_true", help="no name twice: draw until -n distinct names")
    p.add_argument("--new", action="store_true",
                   help="only names in none of the training file's splits: draw until -n are found")
    p.add_argument("--data", metavar="PATH",
                   help="names file that marks train/dev/test (default: the one the model was trained on)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.epilog = (f"--unique and --new give up, with an error, after max({MIN_DRAWS:,}, "
                f"{DRAWS_PER_NAME} x N) draws.")
    p.set_defaults(func=cmd_sample)


# ---------------------------------------------------------------------------------------------
# score


def cmd_score(args) -> int:
    if bool(args.names) == bool(args.file):
        raise UsageError("give the names to score either as arguments or with --file PATH "
                         "('-' for standard input)")
    import json

    from .runs import load_run
    from .sample import NameModel

    run = load_run(args.run_dir)
    lm = NameModel(run.model, run.vocab)
    if args.names:
        bad = [n for n in args.names if run.vocab.unknown(n)]
        if bad:
            details = "; ".join(f"{n!r} has {''.join(run.vocab.unknown(n))!r}" for n in bad)
            raise UsageError(f"names with characters outside the model's vocabulary: {details} "
                             f"(it knows {''.join(run.vocab.chars)!r})")
        names = iter(args.names)
    elif args.file == "-":  # read as it comes: checked name by name
        names = _known_names(_read_lines(sys.stdin.buffer, "<stdin>"), "<stdin>", run.vocab)
    else:  # a file can be read twice: every name is checked before any is scored
        for _ in _known_names(_read_file(args.file), args.file, run.vocab):
            pass
        names = (name for _, name in _read_file(args.file))
    with _QuietOnClosedPipe():
        sys.stdout.write("[" if args.json else f"{'log-lik':>9}  {'per char':>8}  {'tokens':>6}  name\n")
        try:
            for i, (name, total, tokens) in enumerate(lm.iter_scores(names)):
                if args.json:
                    row = {"name": name, "log_likelihood": total, "per_char": total / tokens, "tokens": tokens}
                    sys.stdout.write(("," if i else "") + "\n  " + json.dumps(row, ensure_ascii=False))
                else:
                    sys.stdout.write(f"{total:9.3f}  {total / tokens:8.3f}  {tokens:6d}  {name}\n")
        finally:
            if args.json:
                sys.stdout.write("\n]\n")
    return 0


def _read_file(path):
    """(line number, name) of each name in the file at ``path``, read line by line."""
    from .data import DataError

    try:
        with open(path, "rb") as f:
            yield from _read_lines(f, path)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _read_lines(stream, source):
    """(line number, name) of each non-blank line of a binary stream (UTF-8, put in NFC form)."""
    import unicodedata

    from .data import DataError

    for lineno, line in enumerate(stream, start=1):
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{source}:{lineno}: not valid UTF-8 (byte 0x{line[e.start]:02x} at "
                            f"column {e.start + 1})") from None
        text = unicodedata.normalize("NFC", text.strip())
        if text:
            yield lineno, text


def _known_names(rows, source, vocab):
    """The names of ``rows``, stopping at the first with characters the model does not know."""
    for lineno, name in rows:
        missing = vocab.unknown(name)
        if missing:
            raise UsageError(f"{source}:{lineno}: {name!r} has characters outside the model's "
                             f"vocabulary: {''.join(missing)!r} (it knows {''.join(vocab.chars)!r})")
        yield name


def add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="log-likelihood of names under a saved model",
                       description="Log-likelihood in nats of each name under the model: the total, "
                                   "and per token counting the end of the name (so it compares with "
                                   "the loss). Names come from the command line or, one per line, "
                                   "from a file or standard input, and are scored and printed as they "
                                   "are read. A name with a character outside the vocabulary stops "
                                   "the command (exit 2); from a file, before anything is scored.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("names", metavar="NAME", nargs="*", help="names to score")
    p.add_argument("--file", metavar="PATH", help="read the names from this file, one per line; "
                   "'-' reads standard input")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_score)


# ---------------------------------------------------------------------------------------------
# export


def cmd_export(args) -> int:
    from .config import check_positive_int

    if args.version is not None:  # before TensorFlow loads
        check_positive_int(args.version, "--version")
    from .export import export_run
    from .runs import load_run

    run = load_run(args.run_dir)
    path = export_run(run, version=args.version, format=args.format)
    if args.format == "litert":
        print(f"LiteRT model written to {path / 'model.tflite'}, its vocabulary to {path / 'model.json'}")
        print(f"generate names with it (no TensorFlow needed): python -c \"from kmlp.litert import "
              f"LiteRTModel, generate_names; print(generate_names(LiteRTModel('{path / 'model.tflite'}'), 5))\"")
        return 0
    print(f"SavedModel written to {path}")
    print("signatures: serving_default (context -> next-character probabilities), generate, "
          "generate_with_prefix, generate_with_options, score")
    print(f"inspect it with: saved_model_cli show --dir {path} --all")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a TensorFlow SavedModel for serving, or a LiteRT model",
                       description="Write the model, its vocabulary and its sampling and scoring "
                                   "functions as a SavedModel to DIR/export/<version>/, the layout "
                                   "TensorFlow Serving loads; or, with --format litert, a LiteRT "
                                   "model (model.tflite and model.json) to DIR/litert/<version>/.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("--format", choices=["saved_model", "litert"], default="saved_model",
                   help="saved_model (default): for TensorFlow Serving; litert: for phones and "
                        "embedded devices, run by the LiteRT interpreter")
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
    check_out_dir(args.out, kind="tune")
    from .tune import tune

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
    check_out_dir(args.out, kind="lr_find")
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


# ---------------------------------------------------------------------------------------------
# serve


def cmd_serve(args) -> int:
    from .serve import serve

    return serve(args.run_dir, host=args.host, port=args.port, model_name=args.model_name,
                 data_path=args.data)


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: TensorFlow Serving's REST API and a "
                                     "playground page",
                       description="Serve the run's SavedModel (exported first if it has none) with "
                                   "TensorFlow Serving's REST API at /v1/models/NAME, and a playground "
                                   "page at / to sample names and see the model's next-character "
                                   "probabilities. Ctrl-C stops it.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for "
                        "every network interface)")
    p.add_argument("--port", type=int, default=8501,
                   help="TCP port (default 8501, TensorFlow Serving's REST port; 0 for any free one)")
    p.add_argument("--model-name", default="kmlp",
                   help="the model's name in the URLs, /v1/models/NAME (default kmlp)")
    p.add_argument("--data", metavar="PATH",
                   help="names file that marks train/dev/test (default: the one the model was trained on)")
    p.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kmlp", description="A character-level MLP language model (Bengio et al. 2003) "
                                             "for names, built with Keras.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_train_parser, add_evaluate_parser, add_sample_parser, add_score_parser,
                add_export_parser, add_tune_parser, add_lr_find_parser, add_serve_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run one command; every mistake in the input is one line on stderr and exit status 2."""
    from .cluster import ClusterError
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
    except (DataError, ConfigError, RunError, UsageError, TrainingDiverged, ClusterError) as e:
        print(f"kmlp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("kmlp: " + ("terminated" if isinstance(e, Terminated) else "interrupted"), file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
