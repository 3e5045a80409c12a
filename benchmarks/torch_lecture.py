"""The reference: the "makemore, part 2" lecture's training loop in plain PyTorch.

Written the way the lecture writes it: parameters as bare tensors drawn with ``torch.randn`` from a
seeded generator, a fresh random minibatch of indices each step, ``F.cross_entropy``, and a manual
SGD update ``p.data += -lr * p.grad``. It trains on the same splits and example arrays as kmlp
(``NamesData.examples``), so the two differ only in how the steps are run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TorchResult:
    steps: int
    warmup_steps: int
    warmup_seconds: float       # the first warmup_steps steps (allocator, first dispatch)
    seconds: float              # the remaining steps, dev evaluations excluded
    dev_loss: float
    threads: int
    reached: dict = field(default_factory=dict)  # target -> (step, seconds since the first step)

    @property
    def steps_per_second(self) -> float:
        return (self.steps - self.warmup_steps) / self.seconds


WARMUP_STEPS = 100


def dev_loss(params, X, Y, block_size: int) -> float:
    import torch
    import torch.nn.functional as F

    C, W1, b1, W2, b2 = params
    with torch.no_grad():
        h = torch.tanh(C[X].view(-1, W1.shape[0]) @ W1 + b1)
        return float(F.cross_entropy(h @ W2 + b2, Y))


def train_lecture(data, steps: int = 200_000, n_embd: int = 10, n_hidden: int = 200,
                  batch_size: int = 32, lr: float = 0.1, decay_at: int | None = None,
                  seed: int = 2147483647, threads: int = 1, eval_every: int = 0,
                  target: float | None = None) -> TorchResult:
    """Train the lecture's MLP on ``data`` (a ``kmlp.NamesData``) for ``steps`` steps.

    The rate is ``lr`` until ``decay_at`` (default: half way), then ``lr / 10``. With ``eval_every``
    the dev loss is computed every that many steps (outside the timed part) and the first step and
    time at which it falls to ``target`` or below are recorded in ``reached``.
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    decay_at = steps // 2 if decay_at is None else decay_at
    Xtr, Ytr = (torch.from_numpy(a).long() for a in data.examples("train"))
    Xdev, Ydev = (torch.from_numpy(a).long() for a in data.examples("dev"))
    vocab_size, block_size = len(data.vocab), data.block_size

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    C = torch.randn((vocab_size, n_embd), generator=g)
    W1 = torch.randn((block_size * n_embd, n_hidden), generator=g)
    b1 = torch.randn(n_hidden, generator=g)
    W2 = torch.randn((n_hidden, vocab_size), generator=g)
    b2 = torch.randn(vocab_size, generator=g)
    parameters = [C, W1, b1, W2, b2]
    for p in parameters:
        p.requires_grad = True

    warmup_steps = min(WARMUP_STEPS, steps // 2)
    reached = {}
    timed = 0.0
    started = time.perf_counter()
    warmup = 0.0
    for i in range(steps):
        # minibatch construct
        ix = torch.randint(0, Xtr.shape[0], (batch_size,))
        # forward pass
        emb = C[Xtr[ix]]
        h = torch.tanh(emb.view(-1, block_size * n_embd) @ W1 + b1)
        logits = h @ W2 + b2
        loss = F.cross_entropy(logits, Ytr[ix])
        # backward pass
        for p in parameters:
            p.grad = None
        loss.backward()
        # update
        step_lr = lr if i < decay_at else lr / 10
        for p in parameters:
            p.data += -step_lr * p.grad

        if i + 1 == warmup_steps:
            warmup = time.perf_counter() - started
            started = time.perf_counter()
        if eval_every and (i + 1) % eval_every == 0 and target is not None and target not in reached:
            timed += time.perf_counter() - started
            if dev_loss(parameters, Xdev, Ydev, block_size) <= target:
                reached[target] = (i + 1, warmup + timed)
            started = time.perf_counter()
    timed += time.perf_counter() - started
    return TorchResult(steps=steps, warmup_steps=warmup_steps, warmup_seconds=warmup, seconds=timed,
                       dev_loss=dev_loss(parameters, Xdev, Ydev, block_size), threads=threads,
                       reached=reached)
