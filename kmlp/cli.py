"""The ``kmlp`` command: a thin layer over the Python API.

    kmlp train [--preset NAME] [flags]        train a model, save it, print sampled names
    kmlp evaluate DIR --split test            loss of a saved model on one split
    kmlp sample DIR -n 20 --seed 1            names sampled from a saved model

Every error in the input (files, flags, saved models) ends in a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from ._quiet import silence_tensorflow


class UsageError(ValueError):
    """A flag's value is wrong."""


# ---------------------------------------------------------------------------------------------
# train


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Data, model and optimisation flags, shared by every command that builds and trains a model."""
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="names file, one per line (default: data/names.txt, "
                   "downloaded and verified if missing)")
    g.add_argument("--seed", type=int, help="seed for the split, initialisation and data order (default 42)")
    g = p.add_argument_group("configuration (flags override --config, which overrides --preset)")
    g.add_argument("--preset", help="named configuration: default, lecture, fast, best (default: default)")
    g.add_argument("--config", metavar="FILE", help="JSON configuration, e.g. written by kmlp tune")
    g = p.add_argument_group("model")
    g.add_argument("--block-size", type=int, help="characters of context (lecture: 3)")
    g.add_argument("--n-embd", type=int, help="embedding size per character (lecture: 10)")
    g.add_argument("--n-hidden", type=int, help="units in each hidden tanh layer (lecture: 200)")
    g.add_argument("--n-layers", type=int, help="number of hidden tanh layers (lecture: 1)")
    g.add_argument("--dropout", type=float, help="dropout rate after each hidden layer (default 0)")
    g.add_argument("--norm", choices=["none", "batch", "layer"], help="normalisation before each tanh")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help="examples per optimizer step (lecture: 32)")
    g.add_argument("--steps", type=int, help="optimizer steps (lecture: 200000)")
    g.add_argument("--epochs", type=int, help="passes over the train split, instead of --steps")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="optimizer (lecture: sgd)")
    g.add_argument("--lr", type=float, help="initial learning rate (lecture: 0.1)")
    g.add_argument("--weight-decay", type=float, help="decoupled weight decay (adamw, sgd)")
    g.add_argument("--decay-at", metavar="STEPS", type=_step_list,
                   help="comma-separated steps at which the rate is multiplied by --decay-factor "
                        "(lecture: 100000); 'none' for a constant rate")
    g.add_argument("--decay-factor", type=float, help="factor applied at each --decay-at step (lecture: 0.1)")
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
    """Config = preset, then --config FILE, then every flag given on the command line."""
    from .config import Config, load_config_file, preset

    config = preset(args.preset or "default")
    if args.config:
        config = config.replace(**load_config_file(args.config).to_dict())
    names = [f for f in Config.__dataclass_fields__ if getattr(args, f, None) is not None]
    config = config.replace(**{f: getattr(args, f) for f in names})
    if args.epochs is not None:
        config = config.replace(steps=None)
    return config.validate()


def cmd_train(args) -> int:
    from .sample import sample_names
    from .train import train

    config = config_from_args(args)
    result = train(config, data_path=args.data, out_dir=args.out, preset_name=args.preset or "default",
                   verbose=0 if args.quiet else 2)
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
    p.add_argument("--out", metavar="DIR", help="run directory to write (default: saved_models/<preset>)")
    p.add_argument("--samples", type=int, default=10, help="names to sample and print at the end (default 10)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.set_defaults(func=cmd_train)


# ---------------------------------------------------------------------------------------------
# evaluate


def cmd_evaluate(args) -> int:
    from .data import NamesData
    from .runs import load_run, update_metrics
    from .train import EVAL_BATCH, evaluate_loss

    run = load_run(args.run_dir)
    data = NamesData.from_file(args.data or run.info.get("data"), block_size=run.config.block_size,
                               seed=run.config.seed, vocab=run.vocab)
    loss = evaluate_loss(run.model, data.dataset(args.split, EVAL_BATCH, shuffle=False))
    update_metrics(run.path, **{f"{args.split}_loss": loss})
    print(f"{args.split} loss {loss:.4f} ({data.num_examples(args.split):,} examples, "
          f"{len(data.words[args.split]):,} names); recorded in {run.path / 'metrics.json'}")
    return 0


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="loss of a saved model on a split (test: only at the very end)")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("--split", choices=["train", "dev", "test"], default="dev", help="which split (default dev)")
    p.add_argument("--data", metavar="PATH", help="names file (default: the one the model was trained on)")
    p.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------------------------------------
# sample


def cmd_sample(args) -> int:
    from .runs import load_run
    from .sample import sample_names

    if args.num < 1:
        raise UsageError(f"-n/--num must be a positive integer, got {args.num}")
    run = load_run(args.run_dir)
    for name in sample_names(run.model, run.vocab, args.num, seed=args.seed):
        print(name)
    return 0


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="print names sampled from a saved model")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    p.add_argument("-n", "--num", type=int, default=20, help="how many names (default 20)")
    p.add_argument("--seed", type=int, help="random seed; the same seed gives the same names")
    p.set_defaults(func=cmd_sample)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmlp", description="A character-level MLP language model (Bengio et al. 2003) for names, "
                                 "built with Keras.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_train_parser, add_evaluate_parser, add_sample_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    silence_tensorflow()
    from .config import ConfigError
    from .data import DataError
    from .runs import RunError
    from .train import TrainingDiverged

    try:
        return args.func(args)
    except (DataError, ConfigError, RunError, UsageError, TrainingDiverged) as e:
        print(f"kmlp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kmlp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
