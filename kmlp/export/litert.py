"""LiteRT (TensorFlow Lite): names from an exported ``model.tflite`` with the LiteRT interpreter
alone, numpy and ``ai-edge-litert`` (``pip install "kmlp[litert]"``), no TensorFlow.

``kmlp export DIR --format litert`` writes ``DIR/litert/<N>/model.tflite`` (context indices
``int32 [B, block_size]`` -> next-token logits ``float32 [B, V]``) and ``model.json`` beside it
(the tokens in index order, the end of a name "." first, and the context length). This module is
the reference loop that turns them into names, one character per interpreter call, drawing each
character by the rule of :mod:`kmlp.generation.drawing`: for the same seed and options it gives the names
``kmlp sample`` gives (up to the interpreter's rounding, about 1e-6 on the logits)::

    from kmlp.export.litert import LiteRTModel, generate_names

    model = LiteRTModel("saved_models/fast/litert/1/model.tflite")
    generate_names(model, 5, seed=1)                 # = kmlp sample saved_models/fast -n 5 --seed 1
    generate_names(model, 5, seed=1, prefix="ja", top_p=0.9)

A port to a phone needs the same three pieces: the interpreter call, the 32-bit hash that gives
each draw its uniform number (:func:`kmlp.generation.drawing.uniform`) and the draw itself
(:func:`kmlp.generation.drawing.next_tokens`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kmlp.generation.drawing import Sampling, check_count, name_key, next_tokens, pick_seed, uniform
from kmlp.utils.jsonfile import read_json

FORMAT = "kmlp-litert"
BOUNDARY = "."


def describe(chars: list[str], block_size: int, max_len: int) -> dict:
    """What ``model.json`` holds, beside ``model.tflite``."""
    return {
        "format": FORMAT, "format_version": 1,
        "tokens": [BOUNDARY, *chars],
        "block_size": block_size,
        "input": f"int32 [batch, {block_size}]: indices of the characters before the next one, "
                 "left-padded with 0 (the boundary)",
        "output": f"float32 [batch, {len(chars) + 1}]: logits of the next token; token 0 ends the name",
        "default_max_len": max_len,
        "drawing": "kmlp.generation.drawing: uniform = lowbias32 hash of (seed, name number, step); inverse CDF",
    }


class LiteRTModel:
    """An exported ``model.tflite`` and the ``model.json`` beside it, run by the LiteRT interpreter."""

    def __init__(self, path: str | Path):
        from ai_edge_litert.interpreter import Interpreter

        path = Path(path)
        info = read_json(path.with_suffix(".json"), error=ValueError)
        if info.get("format") != FORMAT:
            raise ValueError(f"{path.with_suffix('.json')}: not a {FORMAT} description")
        self.tokens = info["tokens"]
        self.chars = self.tokens[1:]
        self.index = {c: i for i, c in enumerate(self.tokens) if i > 0}
        self.block_size = int(info["block_size"])
        self.max_len = int(info["default_max_len"])
        interpreter = Interpreter(model_path=str(path))
        self._run = interpreter.get_signature_runner()
        self._input = next(iter(self._run.get_input_details()))

    def logits(self, contexts) -> np.ndarray:
        """Next-token logits ``float32 [B, V]`` of context indices ``[B, block_size]``."""
        out = self._run(**{self._input: np.asarray(contexts, np.int32).reshape(-1, self.block_size)})
        return next(iter(out.values()))


def generate_names(model: LiteRTModel, num: int, seed: int | None = None, **options) -> list[str]:
    """``num`` names, one character per interpreter call (options: see kmlp.generation.drawing.Sampling)."""
    s = Sampling(**{"max_len": model.max_len, **options}).check(model.chars)
    seed, names = pick_seed(seed), []
    for row in range(check_count(num)):
        key, name = name_key(seed, row), s.prefix
        context = [0] * model.block_size + [model.index[c] for c in name]
        for step in range(s.max_len - len(s.prefix)):
            logits = model.logits([context[-model.block_size:]])
            token = int(next_tokens(logits, uniform(key, step), s.temperature, s.top_k, s.top_p,
                                    end_allowed=len(name) >= s.min_len)[0])
            if token == 0:
                break
            name += model.tokens[token]
            context.append(token)
        names.append(name)
    return names
