"""Pictures of a training run, drawn with matplotlib's Agg renderer (no display needed).

    loss.png       log10 of the training loss against the optimizer step, dev loss at each
                   evaluation, and the learning rate underneath
    embedding.png  the character embedding table in 2-D, one labelled point per character
    lr_find.png    the learning-rate range test: loss against log10 of the rate

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so nothing global
(backend, open windows) is touched. Every file is written whole or not at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .runs import atomic_open

LOSS_PLOT = "loss.png"
EMBEDDING_PLOT = "embedding.png"

TRAIN_COLOR = "#1f77b4"
DEV_COLOR = "#d62728"
RATE_COLOR = "#555555"
SUGGEST_COLOR = "#2ca02c"
VOWELS = set("aeiouy")
GROUP_COLORS = {"vowel": "#d62728", "consonant": "#1f77b4", "boundary": "#7f7f7f"}


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _tidy(ax) -> None:
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG, whole or not at all (see :func:`kmlp.runs.atomic_open`)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return Path(path)


def plot_loss(path, steps, losses, dev_steps=(), dev_losses=(), rates=None, title: str | None = None
              ) -> Path:
    """The training curve as in the lecture: log10 of the loss against the optimizer step.

    ``steps``/``losses`` are the training points (e.g. from :class:`kmlp.callbacks.LossCurve`),
    ``dev_steps``/``dev_losses`` the evaluations on dev, ``rates`` (one per training point) the
    learning rate, drawn in a panel underneath when given.
    """
    steps, losses = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    dev_steps, dev_losses = np.asarray(dev_steps, dtype=float), np.asarray(dev_losses, dtype=float)
    fig = _figure(figsize=(8, 5.2 if rates is not None else 4.2))
    if rates is not None:
        ax, rate_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3.2, 1])
    else:
        ax, rate_ax = fig.subplots(), None
    with np.errstate(divide="ignore", invalid="ignore"):
        ax.plot(steps, np.log10(losses), color=TRAIN_COLOR, linewidth=0.9, alpha=0.85,
                label=f"train (mean of each {_span(steps)})")
        if dev_losses.size:
            ax.plot(dev_steps, np.log10(dev_losses), "o-", color=DEV_COLOR, markersize=3.5,
                    linewidth=1.2, label=f"dev (final {dev_losses[-1]:.4f})")
    ax.set_ylabel("log10 loss")
    loss_axis = ax.secondary_yaxis("right", functions=(lambda y: 10.0 ** y, _safe_log10))
    loss_axis.set_ylabel("loss")
    ax.legend(loc="upper right", frameon=False)
    ax.set_title(title or "Training curve")
    _tidy(ax)
    bottom = ax
    if rate_ax is not None:
        rate_ax.step(steps, np.asarray(rates, dtype=float), where="pre", color=RATE_COLOR, linewidth=1.2)
        rate_ax.set_yscale("log")
        rate_ax.set_ylabel("learning rate")
        _tidy(rate_ax)
        bottom = rate_ax
    bottom.set_xlabel("optimizer step")
    bottom.ticklabel_format(axis="x", style="plain")
    bottom.xaxis.set_major_formatter(_thousands())
    return save_figure(fig, path)


def _span(steps: np.ndarray) -> str:
    """'step' or 'N steps': how many optimizer steps one training point averages."""
    if steps.size < 2:
        return "step"
    width = int(np.median(np.diff(steps)))
    return "step" if width <= 1 else f"{width:,} steps"


def _safe_log10(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.maximum(x, 1e-12))


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}")


def project_2d(embeddings) -> tuple[np.ndarray, str, str]:
    """``(points [V, 2], x label, y label)``: the first two dimensions when there are two, else the
    first two principal components (SVD of the centred table)."""
    table = np.asarray(embeddings, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(f"expected an embedding table [vocab, dims], got shape {table.shape}")
    if table.shape[1] == 1:
        return np.column_stack([table[:, 0], np.zeros(len(table))]), "dimension 1", ""
    if table.shape[1] == 2:
        return table.copy(), "dimension 1", "dimension 2"
    centred = table - table.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    share = singular ** 2 / max(float((singular ** 2).sum()), 1e-30)
    points = centred @ vt[:2].T
    return points, f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%} of variance)"


def plot_embedding(path, embeddings, labels, title: str | None = None) -> Path:
    """Each character's embedding as a labelled point in 2-D (see :func:`project_2d`).

    ``labels[i]`` names row i (``vocab.token(i)``: the boundary token is ``.``). Vowels, consonants
    and the boundary get different colours, which makes the groups the model learned easy to see.
    """
    labels = list(labels)
    points, xlabel, ylabel = project_2d(embeddings)
    if len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} embeddings")
    colours = [GROUP_COLORS["boundary" if c == "." else "vowel" if c.lower() in VOWELS else "consonant"]
               for c in labels]
    fig = _figure(figsize=(6.4, 6.0))
    ax = fig.subplots()
    for i in sorted(range(len(labels)), key=lambda i: labels[i] == "."):  # the boundary on top
        (x, y), z = points[i], 2 + 2 * (labels[i] == ".")
        ax.scatter([x], [y], s=260, color=colours[i], alpha=0.85, edgecolors="white",
                   linewidths=0.8, zorder=z)
        ax.text(x, y, labels[i], ha="center", va="center", color="white", fontsize=10,
                fontweight="bold", zorder=z + 1)
    ax.set_aspect("equal", adjustable="datalim")  # distances in the picture are distances in the table
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    dims = np.asarray(embeddings).shape[1]
    ax.set_title(title or f"Character embeddings ({dims} dimensions"
                 f"{', first two principal components' if dims > 2 else ''})")
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], marker="o", linestyle="", markersize=9, color=c,
                     label="vowel (a e i o u y)" if name == "vowel" else name)
              for name, c in GROUP_COLORS.items()]
    ax.legend(handles=legend, loc="best", frameon=False, fontsize=9)
    ax.margins(0.1)
    _tidy(ax)
    return save_figure(fig, path)


def plot_lr_find(path, result, title: str | None = None) -> Path:
    """The range test (a :class:`kmlp.lr_find.LRFindResult`): raw and smoothed loss against log10 of
    the rate, with the floor of the curve and the suggested rate marked."""
    from .lr_find import centred_average

    log_rates = np.log10(np.asarray(result.rates, dtype=float))
    raw = np.asarray(result.losses, dtype=float)
    smoothed = np.asarray(result.smoothed, dtype=float)
    fig = _figure(figsize=(8, 4.8))
    ax = fig.subplots()
    ax.plot(log_rates, raw, ".", color="#bbbbbb", markersize=2.5, label="minibatch loss")
    ax.plot(log_rates, smoothed, color=TRAIN_COLOR, linewidth=1.6,
            label="exponential moving average")
    centres, averaged = centred_average(result.rates, result.losses)
    ax.plot(np.log10(centres), averaged, color="#ff7f0e", linewidth=1.6, linestyle="--",
            label="centred average")
    floor, suggested = np.log10(result.floor_lr), np.log10(result.suggested_lr)
    ax.axvline(floor, color="#7f7f7f", linestyle=":", linewidth=1.4,
               label=f"floor of the curve: lr {result.floor_lr:.3g}")
    ax.axvline(suggested, color=SUGGEST_COLOR, linewidth=1.8,
               label=f"suggested: lr {result.suggested_lr:.3g} (floor / 2)")
    finite = smoothed[np.isfinite(smoothed)]
    head = finite[: max(1, len(finite) // 10)]
    top = max(float(head.max()), float(result.floor_loss)) * 1.08
    low = float(np.nanmin(np.where(np.isfinite(raw), raw, np.nan)))
    ax.set_ylim(low - 0.05 * (top - low), top)
    ax.set_xlim(np.log10(result.start_lr), np.log10(result.end_lr))
    ax.set_xlabel("log10 learning rate")
    ax.set_ylabel("loss")
    steps = f"{len(result.rates):,} steps" if len(result.rates) == result.num_steps else \
        f"{len(result.rates):,} of {result.num_steps:,} steps"
    note = ", stopped: the loss diverged" if result.diverged else ""
    ax.set_title(f"{title or 'Learning-rate range test'}\n{steps}{note}", fontsize=11)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.92, edgecolor="#dddddd")
    _tidy(ax)
    return save_figure(fig, path)


def plot_training(run_dir, model, vocab, curve, history_csv, steps_per_epoch: int,
                  title: str | None = None) -> list[Path]:
    """Draw ``loss.png`` and ``embedding.png`` of a trained model into ``run_dir``.

    ``curve`` is the :class:`kmlp.callbacks.LossCurve` that watched ``fit``; the dev losses come from
    the history CSV (one row per evaluation, ``epoch`` counted from 0), which also covers epochs
    run before a resume.
    """
    import csv

    import keras

    run_dir = Path(run_dir)
    dev_steps, dev_losses = [], []
    with open(history_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("val_loss"):
                dev_steps.append((int(row["epoch"]) + 1) * steps_per_epoch)
                dev_losses.append(float(row["val_loss"]))
    table = keras.ops.convert_to_numpy(model.get_layer("embedding").embeddings)
    return [
        plot_loss(run_dir / LOSS_PLOT, curve.steps, curve.losses, dev_steps, dev_losses,
                  rates=curve.rates, title=title),
        plot_embedding(run_dir / EMBEDDING_PLOT, table, [vocab.token(i) for i in range(len(vocab))]),
    ]
