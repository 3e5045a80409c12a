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
``kmlp: error: ...``, and exit status 2; flags and files are checked before TensorFlow loads. So
does a file the system cannot write (a full disk, a read-only file system): ``kmlp: error: PATH:
REASON``, with what was already saved left as it was.
Each command lives with its kind: :mod:`kmlp.cli.training` (train, lr-find, tune),
:mod:`kmlp.cli.names` (evaluate, sample, score), :mod:`kmlp.cli.serving` (export, serve); the
flags that build a model, in :mod:`kmlp.cli.flags`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from kmlp.cli import names, serving, training
from kmlp.cli.flags import DEFAULT_MINUTES, config_from_args, train_config_from_args
from kmlp.errors import ONE_LINE_ERRORS, UsageError
from kmlp.utils.quiet import silence_tensorflow

__all__ = ["DEFAULT_MINUTES", "build_parser", "config_from_args", "main", "train_config_from_args"]


class Parser(argparse.ArgumentParser):
    """argparse, with its mistakes raised as :class:`UsageError` (one line, from :func:`main`) instead
    of a usage block and exit; subcommand parsers are made of the same class."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, docker stop, a scheduler), handled like Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kmlp", description="A character-level MLP language model (Bengio et al. 2003) "
                                             "for names, built with Keras.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (training.add_train_parser, names.add_evaluate_parser, names.add_sample_parser,
                names.add_score_parser, serving.add_export_parser, training.add_tune_parser,
                training.add_lr_find_parser, serving.add_serve_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run one command; every mistake in the input is one line on stderr and exit status 2."""
    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    args = None
    try:
        args = build_parser().parse_args(argv)
        silence_tensorflow()
        return args.func(args)
    except ONE_LINE_ERRORS as e:
        return fail(str(e))
    except OSError as e:  # a full disk, a read-only file system, a file gone: the system's own word
        return fail(os_error_message(e, args))
    except KeyboardInterrupt as e:
        print("kmlp: " + ("terminated" if isinstance(e, Terminated) else "interrupted"), file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_error_message(error: OSError, args) -> str:
    """``PATH: REASON`` for what the system refused; where the error names no file (a write to an open
    file), the folder the command works in."""
    reason = error.strerror or str(error)
    if error.filename is not None:
        name = error.filename
        return f"{os.fsdecode(name) if isinstance(name, bytes) else name}: {reason}"
    folder = getattr(args, "out", None) or getattr(args, "run_dir", None)
    return f"{reason} (working in {folder})" if folder else reason


def fail(message: str) -> int:
    """Report ``message`` as the one line ``kmlp: error: MESSAGE`` on stderr, after whatever was
    printed before it; exit status 2."""
    try:
        sys.stdout.flush()
    except OSError:  # stdout's reader went away: the error still goes to stderr
        pass
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")  # (a path or a key may hold line breaks)
    print(f"kmlp: error: {one_line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
