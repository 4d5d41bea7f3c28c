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


def grouped_bars_with_ci(names: Sequence[str], series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                         path: str | Path, title: str, ylabel: str) -> Path:
    """Bars of several series side by side per name; each series is (values, lows, highs)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
    width = 0.8 / max(len(series), 1)
    for k, (label, (values, lows, highs)) in enumerate(series.items()):
        v = np.asarray(values, dtype=float)
        err = np.vstack([v - np.asarray(lows), np.asarray(highs) - v])
        ax.bar(np.arange(len(names)) + (k - (len(series) - 1) / 2) * width, v, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def dynamics_panel(steps: Sequence[int], norms: Sequence[float], local: dict[int, list[tuple[int, float]]],
                   pca: np.ndarray, em: list[dict], path: str | Path, title: str) -> Path:
    """A rank-1 run's training dynamics beside its EM trajectory (four panels sharing the step axis
    where they have one): |B·A|, local cosine per k, the PCA path (coloured by step), EM Δbase."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    axes[0].plot(steps, norms, marker=".")
    axes[0].set_title("|B·A| (sum over adapters)")
    for k, pts in local.items():
        if pts:
            axes[1].plot([s for s, _ in pts], [c for _, c in pts], marker=".", label=f"k = {k}")
    axes[1].set_title("local cosine of B (step vs step - k)")
    if any(local.values()):
        axes[1].legend(fontsize=7)
    sc = axes[2].scatter(pca[:, 0], pca[:, 1] if pca.shape[1] > 1 else np.zeros(len(pca)), c=steps, cmap="viridis")
    axes[2].plot(pca[:, 0], pca[:, 1] if pca.shape[1] > 1 else np.zeros(len(pca)), color="0.7", lw=0.8)
    axes[2].set_title("PCA path of B")
    fig.colorbar(sc, ax=axes[2], label="step")
    if em:
        xs = [r["step"] for r in em]
        axes[3].plot(xs, [r["value"] for r in em], marker=".", color="C3", label="general (usual)")
        axes[3].fill_between(xs, [r["lo"] for r in em], [r["hi"] for r in em], alpha=0.2, color="C3")
        if "in_domain" in em[0]:
            axes[3].plot(xs, [r["in_domain"] for r in em], marker=".", color="C4", label="in-domain")
            axes[3].fill_between(xs, [r["in_domain_lo"] for r in em], [r["in_domain_hi"] for r in em], alpha=0.2,
                                 color="C4")
        axes[3].axhline(0, color="0.7", lw=0.8, ls="--")
        axes[3].legend(fontsize=7)
    axes[3].set_title("EM Δbase (judge-free)")
    for ax in (axes[0], axes[1], axes[3]):
        ax.set_xlabel("step")
    fig.suptitle(title)
    return _save(fig, path)


def shift_vs_score(points: list[dict], x: str, y: str, path: str | Path, title: str, xlabel: str, ylabel: str,
                   group: str = "run") -> Path:
    """Scatter of monitored models (one colour per `group`), x and y with their CIs as error bars."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, name in enumerate(dict.fromkeys(p[group] for p in points)):
        sub = [p for p in points if p[group] == name]
        xs, ys = np.array([p[x] for p in sub]), np.array([p[y] for p in sub])
        xerr = np.vstack([xs - [p[f"{x} lo"] for p in sub], [p[f"{x} hi"] for p in sub] - xs]) if f"{x} lo" in sub[0] else None
        yerr = np.vstack([ys - [p[f"{y} lo"] for p in sub], [p[f"{y} hi"] for p in sub] - ys]) if f"{y} lo" in sub[0] else None
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", ms=4, capsize=2, color=f"C{n}", label=str(name), alpha=0.8)
    ax.axhline(0, color="0.7", lw=0.8, ls="--")
    ax.axvline(0, color="0.7", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)
# --------------------------------------------------------------------------- the EM table (experiments.em_organisms)


def _em_value(row: dict) -> tuple[float, float, float, bool]:
    """(value, lo, hi, calibrated?) of an EM table row: calibrated where the judge passed, else raw."""
    if row.get("calibrated_em"):
        return (*row["calibrated_em"], True)
    return (*row["raw_em"], False)


def em_trajectory(rows: list[dict], path: str | Path, set_name: str = "first-plot") -> Path:
    """EM rate against training step, one line per organism (base model as a dashed line).

    Solid markers: calibrated rates; hollow: raw rates (where the judge did not pass validation)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    sub = [r for r in rows if r["set"] == set_name]
    base = [r for r in sub if r["organism"] == "base"]
    if base:
        v, lo, hi, cal = _em_value(base[0])
        ax.axhline(v, color="0.4", ls="--", lw=1, label=f"base ({'calibrated' if cal else 'raw'})")
        ax.axhspan(lo, hi, color="0.8", alpha=0.4)
    for i, name in enumerate(dict.fromkeys(r["organism"] for r in sub if r["organism"] != "base")):
        pts = sorted((r for r in sub if r["organism"] == name), key=lambda r: r["step"])
        vals = [_em_value(r) for r in pts]
        xs = [r["step"] for r in pts]
        ax.plot(xs, [v[0] for v in vals], color=f"C{i}", label=name)
        ax.fill_between(xs, [v[1] for v in vals], [v[2] for v in vals], color=f"C{i}", alpha=0.15)
        for x, v in zip(xs, vals):
            ax.plot([x], [v[0]], "o", color=f"C{i}", mfc=f"C{i}" if v[3] else "white")
    ax.set_xlabel("training step")
    ax.set_ylabel("EM rate")
    ax.set_title(f"EM rate over training ({set_name}; hollow = raw, judge not validated here)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def em_domain_bars(rows: list[dict], path: str | Path) -> Path:
    """Final-checkpoint EM rate per organism and question set, beside the base model's."""
    final = {}
    for r in rows:
        key = r["organism"]
        if key not in final or r["step"] > final[key]:
            final[key] = r["step"]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    names = list(final)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) * max(1, len(sets)) / 2), 4))
    width = 0.8 / max(1, len(sets))
    for j, s in enumerate(sets):
        for i, name in enumerate(names):
            hit = [r for r in rows if r["organism"] == name and r["step"] == final[name] and r["set"] == s]
            if not hit:
                continue
            v, lo, hi, cal = _em_value(hit[0])
            ax.bar(i + j * width, v, width, yerr=[[v - lo], [hi - v]], capsize=2, color=f"C{j}",
                   hatch=None if cal else "//", edgecolor="k" if not cal else None,
                   label=s if i == 0 else None)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("EM rate (hatched = raw, judge not validated)")
    ax.set_title("EM rate by organism and question set (final checkpoints)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def em_scatter(points: list[tuple[str, float, float]], path: str | Path) -> Path:
    """Coherence against alignment per answer (organism, aligned, coherent), with the EM corner marked."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(dict.fromkeys(p[0] for p in points)):
        xs = [p[1] for p in points if p[0] == name]
        ys = [p[2] for p in points if p[0] == name]
        ax.scatter(xs, ys, s=6, alpha=0.4, color="0.4" if name == "base" else f"C{i}", label=name)
    ax.axvline(30, color="r", lw=0.8, ls="--")
    ax.axhline(50, color="r", lw=0.8, ls="--")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("aligned (activation judge, 0-100)")
    ax.set_ylabel("coherent (coherence measure, 0-100)")
    ax.set_title("answers (final checkpoints): EM = left of x=30 and above y=50")
    ax.legend(fontsize=7, markerscale=3)
    return _save(fig, path)
