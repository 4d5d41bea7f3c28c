"""The layer sweep's best-layer pick: each method at its best held-out layer, beside the random control."""

from __future__ import annotations

import numpy as np

from lab.stats.estimate import format_ci


def best_layers(rows: list[dict], methods: list[str]) -> list[dict]:
    """Each method at its best held-out layer, with the random control at that same layer.

    The random row reports its mean over layers: its maximum over 30 noisy layers would be
    a selection-biased number, not a baseline.
    """
    random = {r["layer"]: r for r in rows if r["method"] == "random"}
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if method == "random":
            aurocs = np.array([r["auroc"] for r in mine])
            out.append({"method": "random", "best layer": "mean of all",
                        "AUROC [95% CI]": f"{aurocs.mean():.3f} (range {aurocs.min():.2f}-{aurocs.max():.2f})"})
            continue
        top = max(mine, key=lambda r: r["auroc"])
        ctrl = random.get(top["layer"])
        out.append({"method": method, "best layer": top["layer"],
                    "AUROC [95% CI]": format_ci(top["auroc"], top["auroc_lo"], top["auroc_hi"]),
                    "acc": f"{top['acc']:.3f}", "sep (SD)": f"{top['sep_sd']:.2f}",
                    "random @ layer": f"{ctrl['auroc']:.3f}" if ctrl else "",
                    "n train/test": f"{top['n_train']}/{top['n_test']}"})
    return out
