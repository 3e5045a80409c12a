"""The model families' shapes, for the rules in :mod:`kmlp.config` and the builders in :mod:`kmlp.models`.

``mlp`` (the lecture's, and Bengio et al.'s) takes the whole context into its first hidden layer;
``hierarchical`` (the lecture's part 5, after WaveNet) fuses ``fuse`` consecutive positions at each
of its ``n_layers`` levels, down to one vector, so its context must be ``fuse ** n_layers`` characters.
"""

from __future__ import annotations

ARCHS = ("mlp", "hierarchical")
FUSE = 2  # positions each hierarchical level fuses, as in the lecture's part 5


def hidden_layers(block_size: int, n_embd: int, n_hidden: int, n_layers: int, arch: str = "mlp",
                  fuse: int = FUSE) -> list[tuple[int, int]]:
    """``(inputs, positions)`` of each hidden layer: the width of the vectors its Dense takes, and how
    many of them an example gives it (the flat model's one; the hierarchical model's
    ``block_size / fuse ** level``, one per group of fused positions)."""
    if arch == "hierarchical":
        return [(fuse * (n_embd if level == 1 else n_hidden), block_size // fuse ** level)
                for level in range(1, n_layers + 1)]
    return [(block_size * n_embd, 1)] + [(n_hidden, 1)] * (n_layers - 1)


def check_fusing(arch: str, fuse: int, block_size: int, n_layers: int, naming) -> None:
    """Refuse ``--fuse`` on the flat model, and a hierarchical context that is not ``fuse ** n_layers``;
    ``naming`` (a :class:`kmlp.config.Naming`) spells the options in the message."""
    arch_flag, fuse_flag = naming.option("--arch"), naming.option("--fuse")
    if arch != "hierarchical":
        if fuse != FUSE:
            raise naming.error(f"{fuse_flag} applies to {arch_flag} hierarchical only, got {fuse_flag} "
                               f"{naming.value(fuse, '--fuse')} with {arch_flag} {arch}", "--fuse", "--arch")
        return
    if n_layers > 64 or fuse ** n_layers != block_size:  # (no context is near 2**64 characters)
        context = fuse ** n_layers if n_layers <= 64 else f"{fuse}**{n_layers}"
        raise naming.error(f"{arch_flag} hierarchical fuses {fuse_flag} {fuse} positions at each of "
                           f"{naming.option('--n-layers')} {n_layers} levels: {naming.option('--block-size')} "
                           f"must be {context}, got {block_size}", "--arch", "--fuse", "--block-size", "--n-layers")
