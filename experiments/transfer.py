"""Cross-model direction transfer and direction similarity across models / fine-tunes.

    python -m experiments.transfer --contrast refusal \\
        --organisms medical=runs/medical/adapter financial=runs/financial/adapter

For every ordered pair (A, B) of models (the base model and each organism): the direction
fitted on A's train split is scored on B's held-out split (AUROC with CI), beside B's own
direction and a random control; and the cosine similarity of A's and B's directions per
layer (the Model Organisms finding: fine-tunes converge, cosine > 0.8 in most layers).
Scoring one model's direction on another's activations is this experiment's purpose, so no
provenance check applies; `--adapters` is refused (the models are the base and `--organisms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from experiments.common import cli
from lab.core.config import parse_pairs
from lab.core.io import out_folder, write_summary
from lab.directions.contrasts import contrast_cache
from lab.directions.options import AnalysisOptions
from lab.stats.estimate import format_ci
from lab.core.console import console, table
from lab.directions import fit_contrast
from lab.core.errors import BadInput
from lab.core.io import write_rows
from lab.reports.plots import heatmap


@dataclass
class TransferConfig(AnalysisOptions):
    """Transfer directions between models and compare them."""

    contrast: str = field(default="refusal", metadata={"help": "contrast name"})
    organisms: list[str] = field(default_factory=list, metadata={"help": "NAME=ADAPTER_DIR pairs"})
    method: str = field(default="mean_diff", metadata={"help": "direction method"})


def run(cfg: TransferConfig) -> dict:
    cfg.refuse_adapters("--model (the base) and --organisms")
    models = {"base": [], **{n: [a] for n, a in parse_pairs("--organisms", cfg.organisms, "ADAPTER_DIR").items()}}
    if len(models) < 2:
        raise BadInput("transfer needs at least one organism (--organisms NAME=ADAPTER_DIR)")
    fits, vectors = {}, {}
    for name, adapters in models.items():
        cache, contrast = contrast_cache(cfg.view(adapters), cfg.contrast, cfg.cache_dir, cfg.storage, cfg.limit, name)
        fits[name] = fit_contrast(cache, contrast.positive, [cfg.method, "random"], contrast.pooling, cfg.test_fraction,
                                  cfg.seed, cfg.n_boot, negative_label=contrast.negative, contrast=contrast.name)
        vectors[name] = {m: d.vectors for m, d in fits[name].directions.items()}
    layers = fits["base"].layers
    rows = []
    for src in models:
        for dst in models:
            evaluated = fits[dst].score({"transferred": vectors[src][cfg.method], "random": vectors[src]["random"]})
            cos = torch.nn.functional.cosine_similarity(vectors[src][cfg.method], vectors[dst][cfg.method], dim=-1)
            for r in evaluated:
                rows.append({"source": src, "target": dst, **r, "cosine_to_target_own": float(cos[layers.index(r["layer"])])})
    out = out_folder(cfg.out, f"transfer/{contrast.name}")
    write_rows(rows, out / "rows")
    pairs = [(a, b) for i, a in enumerate(models) for b in list(models)[i + 1:]]
    matrix = np.array([[next(r["cosine_to_target_own"] for r in rows if r["source"] == a and r["target"] == b
                             and r["layer"] == L and r["method"] == "transferred") for L in layers] for a, b in pairs])
    heatmap(matrix, [f"{a} vs {b}" for a, b in pairs], [str(L) for L in layers], out / "cosine_by_layer.png",
            f"cosine of {cfg.method} {contrast.name} directions across models")
    summary_rows = []
    for src in models:
        for dst in models:
            mine = [r for r in rows if r["source"] == src and r["target"] == dst and r["method"] == "transferred"]
            top = max(mine, key=lambda r: r["auroc"])
            ctrl = next(r for r in rows if r["source"] == src and r["target"] == dst and r["method"] == "random"
                        and r["layer"] == top["layer"])
            summary_rows.append({"direction from": src, "scored on": dst, "best layer": top["layer"],
                                 "AUROC [95% CI]": format_ci(top["auroc"], top["auroc_lo"], top["auroc_hi"]),
                                 "random @ layer": f"{ctrl['auroc']:.3f}",
                                 "cosine (median over layers)": f"{np.median([r['cosine_to_target_own'] for r in mine]):.3f}"})
    console.print(table(f"direction transfer: {contrast.name} ({cfg.method})", summary_rows))
    return write_summary(out, cfg, rows=summary_rows)


main = cli(TransferConfig, run)


if __name__ == "__main__":
    main()
