"""Matplotlib figures for experiments and reports (PNG, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"probe": "C0", "mean_diff": "C1", "pca": "C2", "gradient": "C3", "random": "0.5"}


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lines_with_ci(rows: list[dict], group: str, x: str, y: str, path: str | Path, title: str,
                  ylabel: str | None = None, hline: float | None = None) -> Path:
    """One line per `group` value of y against x, with a shaded [y_lo, y_hi] band."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r[group] for r in rows):
        sub = sorted((r for r in rows if r[group] == name), key=lambda r: r[x])
        xs = [r[x] for r in sub]
        ax.plot(xs, [r[y] for r in sub], label=str(name), color=COLORS.get(str(name)))
        if f"{y}_lo" in sub[0]:
            ax.fill_between(xs, [r[f"{y}_lo"] for r in sub], [r[f"{y}_hi"] for r in sub], alpha=0.15,
                            color=COLORS.get(str(name)))
    if hline is not None:
        ax.axhline(hline, color="0.7", lw=0.8, ls="--")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], path: str | Path,
            title: str, vmin: float = -1, vmax: float = 1, cmap: str = "RdBu_r") -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(col_labels) + 2), max(3, 0.35 * len(row_labels) + 1.5)))
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_xticks(range(len(col_labels)), col_labels, fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def scatter(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], path: str | Path, title: str,
            xlabel: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(xs, ys)
    for x, y, lab in zip(xs, ys, labels):
        ax.annotate(lab, (x, y), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def bars_with_ci(names: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
                 path: str | Path, title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names)), 4))
    v = np.asarray(values)
    err = np.vstack([v - np.asarray(lows), np.asarray(highs) - v])
    ax.bar(range(len(names)), v, yerr=err, capsize=3, color="C0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)
