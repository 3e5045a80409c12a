"""Pictures of a training run, drawn with matplotlib's Agg renderer (no display needed).

    loss.png       log10 of the training loss against the optimizer step, dev loss at each
                   evaluation, and the learning rate underneath
    embedding.png  the character embedding table in 2-D, one labelled point per character, coloured
                   by what the character is (vowel, consonant, digit, other, the boundary)
    lr_find.png    the learning-rate range test: loss against log10 of the rate

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so nothing global
(backend, open windows) is touched. Every file is written whole or not at all.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import numpy as np

from kmlp.utils.atomic import atomic_open
from kmlp.utils.numeric import centred_average, project_2d

LOSS_PLOT = "loss.png"
EMBEDDING_PLOT = "embedding.png"

TRAIN_COLOR = "#1f77b4"
DEV_COLOR = "#d62728"
RATE_COLOR = "#555555"
SUGGEST_COLOR = "#2ca02c"


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _tidy(ax) -> None:
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG, whole or not at all (see :func:`kmlp.utils.atomic.atomic_open`)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return Path(path)


def plot_loss(path, steps, losses, dev_steps=(), dev_losses=(), rates=None, title: str | None = None
              ) -> Path:
    """The training curve as in the lecture: log10 of the loss against the optimizer step.

    ``steps``/``losses`` are the training points (e.g. from :class:`kmlp.training.callbacks.loss_curve.LossCurve`),
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


def char_class(char: str) -> str:
    """What a character is, for colouring: "vowel", "consonant", "digit" or "other".

    Unicode-aware: a letter is judged by its base letter, so accented vowels (é, ë, ö, å), ø, æ
    and œ are vowels, and ç, ñ, ß consonants; Greek and Cyrillic letters are sorted the same way
    (y, α, и, я are vowels; й is not). Any number is a digit; letters of other scripts (no vowel/consonant
    split here), punctuation, spaces and symbols are "other".
    """
    category = unicodedata.category(char)
    if category.startswith("N"):
        return "digit"
    if not category.startswith("L"):
        return "other"
    base = unicodedata.normalize("NFD", char)[0] if char not in SHORT_I else "j"
    match = _LETTER_NAME.match(unicodedata.name(base, ""))
    if not match:
        return "other"
    script, letter = match.group(1), match.group(2).split()[-1]  # "DOTLESS I" -> "I"
    return "vowel" if letter in VOWEL_LETTERS[script] else "consonant"


_LETTER_NAME = re.compile(r"(LATIN|GREEK|CYRILLIC) (?:SMALL|CAPITAL) (?:LETTER|LIGATURE) (.+?)(?: WITH .*)?$")
VOWEL_LETTERS = {
    "LATIN": {"A", "E", "I", "O", "U", "Y", "AE", "OE"},
    "GREEK": {"ALPHA", "EPSILON", "ETA", "IOTA", "OMICRON", "UPSILON", "OMEGA"},
    "CYRILLIC": {"A", "IE", "IO", "I", "O", "U", "YERU", "E", "YU", "YA", "YI"},
}
SHORT_I = {"\u0439", "\u0419"}  # й, Й: a consonant, though they decompose to и plus a breve
CLASS_COLORS = {"vowel": "#d62728", "consonant": "#1f77b4", "digit": "#2ca02c", "other": "#8c564b",
                "boundary": "#555555"}


def plot_embedding(path, embeddings, labels, title: str | None = None, boundary_index: int = 0) -> Path:
    """Each character's embedding as a labelled point in 2-D (see :func:`embedding_figure`)."""
    return save_figure(embedding_figure(embeddings, labels, title, boundary_index), path)


def embedding_figure(embeddings, labels, title: str | None = None, boundary_index: int = 0):
    """The figure of :func:`plot_embedding`: a dot at each character's point (see :func:`project_2d`)
    and its label in a box coloured by :func:`char_class` (the boundary, row ``boundary_index``, in
    grey).

    Every label stays legible: it sits on its point when there is room, else at the nearest free
    place, joined to its point by a thin line, never over another label or another point's dot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D

    labels = list(labels)
    points, xlabel, ylabel = project_2d(embeddings)
    if len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} embeddings")
    classes = ["boundary" if i == boundary_index else char_class(c) for i, c in enumerate(labels)]
    side = 6.4 * max(1.0, (len(labels) / 40) ** 0.5)  # room for every label as the vocabulary grows
    fig = _figure(figsize=(side, side * 0.95), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)  # a renderer to measure the labels with
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=DOT_SIZE, c=[CLASS_COLORS[k] for k in classes], zorder=3,
               linewidths=0)
    ax.set_aspect("equal", adjustable="datalim")  # distances in the picture are distances in the table
    ax.margins(0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    dims = np.asarray(embeddings).shape[1]
    ax.set_title(title or f"Character embeddings ({dims} dimensions"
                 f"{', first two principal components' if dims > 2 else ''})")
    _tidy(ax)
    shown = [k for k in CLASS_COLORS if k in classes]
    fig.legend(handles=[Line2D([], [], marker="s", linestyle="", markersize=9, color=CLASS_COLORS[k],
                               label=k) for k in shown],
               loc="outside lower center", ncol=len(shown), frameon=False, fontsize=9)
    fig.canvas.draw()  # fixes the layout, so that label boxes can be placed in pixels
    _place_labels(ax, points, labels, [CLASS_COLORS[k] for k in classes])
    return fig


FIGURE_DPI = 120
DOT_SIZE = 16  # points squared


def _place_labels(ax, points, labels, colours) -> None:
    """Put each label on its point, or else at the nearest spot (rings of 16 directions) where its
    box overlaps no other box, no other point's dot and stays inside the axes."""
    renderer = ax.figure.canvas.get_renderer()
    pixels = ax.transData.transform(points)
    frame = ax.get_window_extent(renderer)
    dot = np.sqrt(DOT_SIZE) * ax.figure.dpi / 72 / 2 + 1  # dot radius in pixels, and a pixel to spare
    placed = []
    order = sorted(range(len(labels)), key=lambda i: -_crowding(pixels, i))  # crowded ones first
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for i in order:
        text = ax.text(*points[i], shown_label(labels[i]), ha="center", va="center", color="white",
                       fontsize=10, fontweight="bold", zorder=5, in_layout=False,
                       bbox=dict(boxstyle="round,pad=0.25", facecolor=colours[i], edgecolor="none"))
        text.update_bbox_position_size(renderer)
        box = text.get_bbox_patch().get_window_extent(renderer).padded(1.5)  # the coloured box
        others = np.delete(pixels, i, axis=0)
        step = max(box.width, box.height) * 0.5
        rings = ([(0.0, 0.0)] if r == 0 else zip(r * np.cos(angles), r * np.sin(angles))
                 for r in np.arange(40) * step)
        shift = next((np.array(d) for ring in rings for d in ring
                      if _free(box.translated(*d), placed, others, dot, frame)), np.zeros(2))
        placed.append(box.translated(*shift))
        at = ax.transData.inverted().transform(pixels[i] + shift)
        text.set_position(at)
        if shift.any():
            ax.plot([points[i, 0], at[0]], [points[i, 1], at[1]], color=colours[i], linewidth=0.8,
                    alpha=0.8, zorder=4)


def shown_label(char: str) -> str:
    """How a character is written on the plot: itself, a space as "␣", and one that would not show
    (other blank or invisible characters, or one the plot's font lacks) as its code point, U+XXXX."""
    if char == " ":
        return "\u2423"
    invisible = unicodedata.category(char)[0] in "ZC"
    return f"U+{ord(char):04X}" if invisible or not _font_has(char) else char


def _font_has(char: str) -> bool:
    return all(_label_font().get_char_index(ord(c)) for c in char)


@functools.lru_cache(maxsize=1)
def _label_font():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_manager.findfont(font_manager.FontProperties(weight="bold")))


def _crowding(pixels, i) -> float:
    """How close the nearest other point is to point ``i`` (larger: closer)."""
    gaps = np.linalg.norm(np.delete(pixels, i, axis=0) - pixels[i], axis=1)
    return -gaps.min() if gaps.size else 0.0


def _free(box, placed, dots, dot_radius, frame) -> bool:
    """Whether ``box`` lies inside ``frame`` and clear of the ``placed`` boxes and of the ``dots``."""
    if box.x0 < frame.x0 or box.y0 < frame.y0 or box.x1 > frame.x1 or box.y1 > frame.y1:
        return False
    if any(box.overlaps(other) for other in placed):
        return False
    gaps = np.hypot(dots[:, 0] - np.clip(dots[:, 0], box.x0, box.x1),
                    dots[:, 1] - np.clip(dots[:, 1], box.y0, box.y1))
    return not np.any(gaps < dot_radius)


def plot_lr_find(path, result, title: str | None = None) -> Path:
    """The range test (a :class:`kmlp.training.lr_find.LRFindResult`): raw and smoothed loss against log10 of
    the rate, with the floor of the curve and the suggested rate marked."""
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

    ``curve`` is the :class:`kmlp.training.callbacks.loss_curve.LossCurve` that watched ``fit``; the
    dev losses come from the history CSV (one row per evaluation, ``epoch`` counted from 0), which also covers epochs
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
