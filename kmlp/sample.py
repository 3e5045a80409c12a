"""Sampling: generate names from a trained model."""

from __future__ import annotations

import numpy as np

from .data import Vocabulary


def sample_names(model, vocab: Vocabulary, num: int = 20, seed: int | None = None, max_len: int = 50
                 ) -> list[str]:
    """Draw ``num`` names; all of them advance one character per step together."""
    block_size = int(model.input_shape[-1])
    rng = np.random.default_rng(seed)
    context = np.zeros((num, block_size), dtype=np.int32)
    out = np.zeros((num, max_len), dtype=np.int32)
    done = np.zeros(num, dtype=bool)
    for t in range(max_len):
        logits = np.asarray(model(context, training=False), dtype=np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        nxt = (probs.cumsum(axis=1) > rng.random((num, 1))).argmax(axis=1).astype(np.int32)
        nxt[done] = 0
        out[:, t] = nxt
        done |= nxt == 0
        if done.all():
            break
        context = np.concatenate([context[:, 1:], nxt[:, None]], axis=1)
    return [vocab.decode(row) for row in out]
