"""The flags every command that builds a model shares, and the configuration they give.

A configuration is a preset, then the options a ``--config`` file sets, then every flag given on the
command line (:func:`config_from_args`); ``kmlp train`` adds its rules for how long a run trains
(:func:`train_config_from_args`).
"""

from __future__ import annotations

import argparse
import os

from kmlp.errors import DataError


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
                   "(dev loss under 1.95 in the least time found; bfloat16 products), part3 and part5 (the lecture's "
                   "batch-norm and hierarchical models, exactly) (default: default)")
    g.add_argument("--config", metavar="FILE", help="JSON configuration, e.g. written by kmlp tune")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["mlp", "hierarchical"],
                   help="mlp: the whole context into the first hidden layer (default); hierarchical: "
                        "--fuse consecutive positions fused at each of --n-layers levels, as the lecture's "
                        "part 5 (--block-size must be --fuse to the power --n-layers)")
    g.add_argument("--fuse", type=int, help="positions each level of --arch hierarchical fuses (default 2)")
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
    g.add_argument("--init", choices=["glorot", "normal", "kaiming", "fan_in"],
                   help="initial dense weights: glorot (default); normal, N(0, 1) as in the lecture; kaiming, "
                        "the lecture's part 3 (N(0, 1) times 5/3 over sqrt(fan_in), logits' times 0.01); fan_in, "
                        "its part 5 (N(0, 1) over sqrt(fan_in), logits' times 0.1)")
    g.add_argument("--norm-momentum", type=float, help="share of batch norm's moving statistics kept at "
                   "each step (default 0.99; PyTorch's momentum m is 1 - m here)")
    g.add_argument("--norm-epsilon", type=float, help="added to the variance a normalisation divides by "
                   "(default 0.001)")
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
    return configure(args)[0]


# How long `kmlp train` trains when nothing says how long: a time budget, so that a newcomer's first
# run ends in the same time on any machine (a number of steps takes what the machine makes of it).
DEFAULT_MINUTES = 3.0


def train_config_from_args(args):
    """:func:`config_from_args`, with the length rules of ``kmlp train``: ``--minutes`` or
    ``--steps``/``--epochs``, never both; with no --preset, --config or length at all,
    :data:`DEFAULT_MINUTES`."""
    return configure(args, train=True)[0]


def configure(args, train: bool = False):
    """``(config, naming)``: the configuration of :func:`config_from_args` (of
    :func:`train_config_from_args` if ``train``), refused if a training of it cannot fit in this
    machine's memory even with the smallest vocabulary; and the :class:`kmlp.config.Naming` that
    names each option as it was given, a flag or the --config file's key (for later checks)."""
    from kmlp.config import (LENGTHS, Config, Naming, check_fits_in_memory, check_one_length, load_config_file,
                             preset)

    lengths = {key for key in ("minutes", *LENGTHS) if getattr(args, key, None) is not None}
    if train:
        check_one_length(lengths)
    base = preset(args.preset or "default")
    config = load_config_file(args.config, base=base) if args.config else base
    given = {f: getattr(args, f) for f in Config.__dataclass_fields__ if getattr(args, f, None) is not None}
    if lengths:  # a length given as flags replaces a file's (whose steps then place --minutes' milestones)
        given = {"minutes": None, "stop_at": None, **given}
    if args.epochs is not None:
        given["steps"] = None
    if train and not lengths and args.preset is None and args.config is None and args.start_from is None:
        given["minutes"] = DEFAULT_MINUTES
    from_file = {f for f in Config.__dataclass_fields__ if getattr(config, f) != getattr(base, f)} - set(given)
    naming = Naming(file=args.config, keys=from_file) if args.config else Naming()
    values = {**config.to_dict(), **given}
    if train:  # --from RUN: the run's architecture; fine-tuning's rate and length unless given
        from kmlp.runs.start import start_values

        values = start_values(values, explicit=set(given) | from_file, naming=naming)
    config = Config.from_dict(values, naming=naming)
    check_fits_in_memory(config, naming=naming)
    return config, naming


def check_data_flag(data) -> None:
    """Refuse, before any work, a --data path that a run's files (UTF-8) cannot record."""
    from kmlp.utils.jsonfile import check_utf8_path

    if data is not None:
        for path in {os.path.abspath(data), os.path.realpath(data)}:  # a run records one, an evaluation the other
            check_utf8_path(path, "--data", DataError)


def add_run_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that works on a trained run: its parser, with the run folder as first argument."""
    p = sub.add_parser(name, **kwargs)
    p.add_argument("run_dir", metavar="DIR", help="run directory written by kmlp train")
    return p
