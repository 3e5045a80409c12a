"""The playground page: its static files, and :class:`Playground`, the API it calls.

The page's API runs kmlp's Python API on the run's Keras model (the functions the SavedModel is
exported from), so it has every control of ``kmlp sample``: sampled names with their train / dev /
test marks, the probability of every next character of a typed name, the embedding in 2-D.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kmlp.config import check_seed
from kmlp.errors import ConfigError
from kmlp.generation.drawing import MAX_LEN
from kmlp.serving.limits import Limits
from kmlp.serving.rest import RequestError, to_json_values
from kmlp.serving.served_model import ServedModel
from kmlp.utils.numeric import project_2d

PLAYGROUND_DIR = Path(__file__).resolve().parent / "playground"


class Playground:
    """What the playground page shows: names from kmlp's sampler with the run's train / dev / test
    marks, the probability of every next character of a typed name, the embedding in 2-D."""

    DEFAULTS = {"count": 10, "temperature": 1.0, "top_k": 0, "prefix": "", "seed": 42}

    def __init__(self, run, served: ServedModel, data_path=None, limits: Limits = Limits()):
        import keras

        from kmlp.generation.sample import NameModel

        self.run, self.limits = run, limits
        self.lm = NameModel(run.model, run.vocab)
        self.splits, self.marks_unavailable = run.splits(data_path)
        table = keras.ops.convert_to_numpy(run.model.get_layer("embedding").embeddings)
        points, xlabel, ylabel = project_2d(table)
        self.default_max_len = min(MAX_LEN, limits.max_len)
        self.info = {
            "model": served.name, "version": served.version, "export": str(served.path),
            "run": str(run.path), "dev_loss": run.metrics.get("dev_loss"),
            "params": int(run.model.count_params()), "block_size": self.lm.block_size,
            "tokens": [run.vocab.token(i) for i in range(len(run.vocab))],
            "embedding": {"points": np.round(points, 5).tolist(), "xlabel": xlabel, "ylabel": ylabel,
                          "dims": int(table.shape[1])},
            "marks_unavailable": self.marks_unavailable,
            "defaults": {**self.DEFAULTS, "max_len": self.default_max_len},
            "limits": asdict(limits), "signatures": sorted(served.signatures),
        }
        self.generate({"count": 1})  # traces the sampler now, not on the first visitor's click
        self.inspect({"text": ""})

    def generate(self, body: dict) -> dict:
        """Names sampled as ``kmlp sample`` samples them, each with where it was found."""
        from kmlp.generation.sample import where_found

        _known_fields(body, [*self.DEFAULTS, "max_len"])
        p = {**self.DEFAULTS, "max_len": self.default_max_len, **body}
        count = _int_field(p, "count", 1, self.limits.max_count)
        top_k = _int_field(p, "top_k", 0, len(self.run.vocab))
        max_len = _int_field(p, "max_len", 1, self.limits.max_len)
        prefix = self._text(p, "prefix", "prefix")
        try:  # the sampler's own checks (kmlp.generation.drawing.Sampling) for the rest
            names = self.lm.sample(count, seed=check_seed(p["seed"], "seed"), temperature=p["temperature"],
                                   top_k=top_k, prefix=prefix, max_len=max_len)
        except ConfigError as e:
            raise RequestError(str(e).removeprefix("--")) from None
        marks = where_found(names, self.splits) if self.splits else [None] * len(names)
        return {"names": [{"name": n, "found_in": m} for n, m in zip(names, marks)], "seed": p["seed"],
                "new": sum(m == "new" for m in marks) if self.splits else None,
                "marks_unavailable": self.marks_unavailable}

    def inspect(self, body: dict) -> dict:
        """For each character of a name and its end: the context the model saw, the probability of
        every token next, and the one that came; with the name's log-likelihood."""
        import tensorflow as tf

        from kmlp.generation.sample import where_found

        _known_fields(body, ["text"])
        text = self._text(body, "text", "name")
        contexts = [text[:i] for i in range(len(text) + 1)]
        ids = self.lm.context_ids(tf.constant(contexts))
        probs = self.lm.next_probs(ids).numpy()
        vocab = self.run.vocab
        targets = [vocab.stoi[c] for c in text] + [0]
        (total, tokens), = self.lm.score([text])
        rows = [{"context": "".join(vocab.token(int(i)) for i in row), "next": vocab.token(t),
                 "p": to_json_values(probs[k, t:t + 1], "p")[0], "probs": to_json_values(probs[k], "p")}
                for k, (row, t) in enumerate(zip(ids.numpy(), targets))]
        return {"text": text, "rows": rows, "log_likelihood": total, "per_char": total / tokens,
                "found_in": where_found([text], self.splits)[0] if self.splits else None}

    def _text(self, body: dict, key: str, what: str) -> str:
        text = body.get(key, "")
        if not isinstance(text, str):
            raise RequestError(f"{key} must be a string, got {json.dumps(text)[:40]}")
        if len(text) > self.limits.max_chars:
            raise RequestError(f"{key}: {len(text):,} characters; the limit is {self.limits.max_chars:,}")
        missing = self.run.vocab.unknown(text)
        if missing:
            raise RequestError(f"{what} {text!r} has characters outside the model's vocabulary: "
                               f"{''.join(missing)!r} (it knows {''.join(self.run.vocab.chars)!r})")
        return text


def _known_fields(body: dict, known) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; expected {', '.join(known)}")


def _int_field(body: dict, key: str, low: int, high: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{key} must be an integer from {low:,} to {high:,}, got {json.dumps(value)}")
    return value

