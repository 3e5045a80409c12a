"""The hierarchical model of the lecture's part 5, after WaveNet (van den Oord et al. 2016): the
context is not taken in at once but fused a few consecutive characters at a time.

    context indices [B, block_size]
      -> Embedding(vocab_size, n_embd)               [B, 8, n_embd]          (block_size 8, fuse 2)
      -> Reshape: fuse 2 consecutive positions       [B, 4, 2 * n_embd]
      -> Dense(n_hidden, no bias) -> norm -> tanh    [B, 4, n_hidden]        level 1
      -> Reshape                                     [B, 2, 2 * n_hidden]
      -> Dense -> norm -> tanh                       [B, 2, n_hidden]        level 2
      -> Reshape                                     [B, 2 * n_hidden]
      -> Dense -> norm -> tanh                       [B, n_hidden]           level 3
      -> Dense(vocab_size)                           logits of the next character

A Reshape groups consecutive positions (a view, as the lecture's FlattenConsecutive), the Dense acts
on each group alike, and batch normalisation over a [B, positions, units] tensor takes its statistics
over the batch and position axes, as the lecture's does. Every layer is a standard Keras layer, so a
saved model loads in safe mode; the rest (embedding, hidden layers, logits, the chunked training
step) is :func:`kmlp.models.mlp.build_model`'s.
"""

from __future__ import annotations

from keras import layers

from kmlp.shapes import hidden_layers


def fused_levels(x, block_size: int, n_embd: int, n_hidden: int, n_layers: int, fuse: int, hidden, body: dict):
    """The levels above the embeddings ``x`` [B, block_size, n_embd]: at each, ``fuse`` consecutive
    positions fused into one vector (the last level's into one per example, [B, ...]), then
    ``hidden(x, level)``, the hidden layer the flat model uses (its Dense, norm, tanh, dropout)."""
    shapes = hidden_layers(block_size, n_embd, n_hidden, n_layers, "hierarchical", fuse)
    for level, (inputs, positions) in enumerate(shapes, start=1):
        shape = (inputs,) if positions == 1 else (positions, inputs)
        x = layers.Reshape(shape, name=f"fuse_{level}", **body)(x)
        x = hidden(x, level)
    return x
