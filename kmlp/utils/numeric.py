"""Two small numeric helpers shared by the pictures, the range test and the server."""

from __future__ import annotations

import numpy as np


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


def centred_average(rates, losses, window: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The raw losses averaged over a centred window of ``window`` times the number of points (at
    least 5): ``(rate at each window's centre, average)``. NaN or infinite losses count as infinitely
    bad.

    Unlike the exponential moving average, a centred average has no lag: the EMA trails the rate
    by about ``1 / (1 - beta)`` steps (50 at beta 0.98), which would put the floor at too high a rate.
    """
    rates = np.asarray(rates, dtype=np.float64)
    losses = np.nan_to_num(np.asarray(losses, dtype=np.float64), nan=np.inf, posinf=np.inf)
    width = min(len(losses), max(5, int(round(window * len(losses)))))
    averaged = np.convolve(losses, np.full(width, 1.0 / width), mode="valid")
    return rates[width // 2: width // 2 + len(averaged)], averaged
