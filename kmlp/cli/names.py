"""The commands on a saved run's names: ``kmlp evaluate`` (its loss on a split), ``kmlp sample``
(names drawn from it, each marked train, dev/test or new) and ``kmlp score`` (the log-likelihood of
given names). Names are printed as they are drawn or read, so there is no limit to how many."""

from __future__ import annotations

import json
import sys

from kmlp.cli.flags import add_run_command, check_data_flag
from kmlp.errors import UsageError


def cmd_evaluate(args) -> int:
    from kmlp.runs.lock import RunLock, check_free
    from kmlp.runs.rundir import load_run

    check_free(args.run_dir)  # at once: loading the run loads TensorFlow
    check_data_flag(args.data)
    run = load_run(args.run_dir)
    with RunLock(run.path):  # checks the run can be written before the work
        from kmlp.training.evaluate import evaluate_run, record_evaluation

        evaluation = evaluate_run(run, args.split, args.data)
        print(f"{evaluation.split} loss {evaluation.loss:.4f}, perplexity {evaluation.perplexity:.3f}, "
              f"{evaluation.bits_per_char:.4f} bits per character ({evaluation.examples:,} examples, "
              f"{evaluation.names:,} names" + ("" if evaluation.own_data else f" of {evaluation.data}") + ")")
        where = record_evaluation(run, evaluation)
    print(f"recorded in {where}")
    return 0


def add_evaluate_parser(sub) -> None:
    p = add_run_command(sub, "evaluate", help="loss of a saved model on a split (test: only at the very end)",
                        description="Loss (mean cross-entropy per character, the end of a name counted as one), "
                                    "perplexity and bits per character on one split, recorded in metrics.json; "
                                    "on another names file (--data), in evaluations.json with its SHA-256.")
    p.add_argument("--split", choices=["train", "dev", "test"], default="dev", help="which split (default dev)")
    p.add_argument("--data", metavar="PATH", help="names file (default: the one the model was trained on)")
    p.set_defaults(func=cmd_evaluate)


def cmd_sample(args) -> int:
    from kmlp.generation.drawing import Sampling, check_count, pick_seed

    # Flags are checked before TensorFlow loads, so mistakes are reported at once.
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        prefix=args.prefix, min_len=args.min_len, max_len=args.max_len).check()
    num, seed = check_count(args.num), pick_seed(args.seed)

    from kmlp.generation.marks import sample_run
    from kmlp.runs.rundir import load_run

    sample = sample_run(load_run(args.run_dir), num, seed, unique=args.unique, new=args.new,
                        data_path=args.data, **sampling.to_dict())
    with _QuietOnClosedPipe():
        if args.json:
            print_sample_json(sample, {"seed": seed, **sampling.to_dict(), "unique": args.unique,
                                       "new": args.new})
        else:
            print_sample(sample)
    return 0


NAME_WIDTH = 16  # names are printed as drawn, so the mark column is aligned for names up to this long


def print_sample(sample) -> None:
    """One name a line, with its mark, then how many are new (or, on stderr, why none is marked)."""
    for name, mark in sample:
        sys.stdout.write(f"{name:<{NAME_WIDTH}}  {mark}\n" if mark else name + "\n")
    if sample.split_of is None:
        print(f"kmlp: train/dev/test marks unavailable: {sample.unavailable}", file=sys.stderr)
        return
    found = sample.found
    print(f"new: {found['new']} of {sample.total} ({sample.new_share:.0%}); copies of the run's list: "
          f"{sample.copies} (in train {found['train']}, in dev/test {found['dev'] + found['test']})")


def print_sample_json(sample, head: dict) -> None:
    """``head`` and the marked names as one JSON object, written as the names come."""
    sys.stdout.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "names": [')
    try:
        for i, (name, mark) in enumerate(sample):
            entry = json.dumps({"name": name, "found_in": mark}, ensure_ascii=False)
            sys.stdout.write(("," if i else "") + "\n  " + entry)
    finally:  # also when --unique/--new fall short: the names found so far stay readable
        sys.stdout.write(f'\n], "new_share": {json.dumps(sample.new_share)}, "copies": {json.dumps(sample.copies)}, '
                         f'"marks_unavailable": {json.dumps(sample.unavailable, ensure_ascii=False)}}}\n')


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
    from kmlp.data.files import MAX_NAME_LENGTH
    from kmlp.generation.drawing import DRAWS_PER_NAME, MAX_LEN, MIN_DRAWS

    p = add_run_command(sub, "sample", help="print names sampled from a saved model",
                        description="Sample names in batched, in-graph loops and mark each as found "
                                    "in the run's train split, in dev/test, or new. Names are printed "
                                    "as they are drawn, so -n can be as large as you like.")
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


def cmd_score(args) -> int:
    if bool(args.names) == bool(args.file):
        raise UsageError("give the names to score either as arguments or with --file PATH "
                         "('-' for standard input)")
    from kmlp.data.streaming import hold_names

    held = hold_names(args.file) if args.file not in (None, "-") else None  # read once, before TensorFlow
    from kmlp.generation.sample import NameModel
    from kmlp.runs.rundir import load_run

    run = load_run(args.run_dir)
    names = names_to_score(args, run.vocab, held)
    scores = NameModel(run.model, run.vocab).iter_scores(names)
    with _QuietOnClosedPipe():
        print_scores(scores, args.json)
    return 0


def names_to_score(args, vocab, held):
    """The names of the arguments, of --file (``held``, as read), or of standard input."""
    from kmlp.data.streaming import check_known, held_known, iter_names, known_names

    if args.names:
        return check_known(args.names, vocab)
    if args.file == "-":  # read as it comes: checked name by name
        return known_names(iter_names(sys.stdin.buffer, "<stdin>"), "<stdin>", vocab)
    return held_known(held, args.file, vocab)  # every name checked before any is scored


def print_scores(scores, as_json: bool) -> None:
    sys.stdout.write("[" if as_json else f"{'log-lik':>9}  {'per char':>8}  {'tokens':>6}  name\n")
    try:
        for i, (name, total, tokens) in enumerate(scores):
            if as_json:
                row = {"name": name, "log_likelihood": total, "per_char": total / tokens, "tokens": tokens}
                sys.stdout.write(("," if i else "") + "\n  " + json.dumps(row, ensure_ascii=False))
            else:
                sys.stdout.write(f"{total:9.3f}  {total / tokens:8.3f}  {tokens:6d}  {name}\n")
    finally:
        if as_json:
            sys.stdout.write("\n]\n")


def add_score_parser(sub) -> None:
    p = add_run_command(sub, "score", help="log-likelihood of names under a saved model",
                        description="Log-likelihood in nats of each name under the model: the total, "
                                    "and per token counting the end of the name (so it compares with "
                                    "the loss). Names come from the command line or, one per line, "
                                    "from a file or standard input, and are scored and printed as they "
                                    "are read. A name with a character outside the vocabulary stops "
                                    "the command (exit 2); from a file, before anything is scored.")
    p.add_argument("names", metavar="NAME", nargs="*", help="names to score")
    p.add_argument("--file", metavar="PATH", help="read the names from this file, one per line; "
                   "'-' reads standard input")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_score)


