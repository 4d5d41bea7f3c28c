"""Cross-model direction transfer and direction similarity across models / fine-tunes.

For every ordered pair (A, B) of models (the base model and each organism): the direction
fitted on A's train split is scored on B's held-out split (AUROC with CI), beside B's own
direction and a random control; and the cosine similarity of A's and B's directions per
layer (the Model Organisms finding: fine-tunes converge, cosine > 0.8 in most layers).
Scoring one model's direction on another's activations is this analysis's purpose, so no
provenance check applies; `--adapters` is refused (the models are the base and `--organisms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lab.core.config import parse_pairs
from lab.core.errors import BadInput
from lab.core.io import out_folder, write_rows
from lab.core.records import Record
from lab.directions.contrasts import contrast_cache
from lab.directions.fit import fit_contrast
from lab.directions.options import AnalysisOptions
from lab.directions.sweep import BestLayer, LayerScore, best_layer


@dataclass
class TransferConfig(AnalysisOptions):
    """AUROC of each model's direction on every other model's held-out split, and their cosines by layer."""

    contrast: str = field(default="refusal", metadata={"help": "contrast name"})
    organisms: list[str] = field(default_factory=list, metadata={"help": "NAME=ADAPTER_DIR pairs"})
    method: str = field(default="mean_diff", metadata={"help": "direction method"})


@dataclass(frozen=True)
class TransferPair(Record):
    """Model `source`'s direction scored on model `target`'s held-out split, at its best layer there."""

    source: str
    target: str
    best: BestLayer  # method "transferred"; random_at_layer: a random direction of `source`'s fit, same layer
    median_cosine: float  # median over layers of the cosine between source's and target's own directions


@dataclass(frozen=True)
class TransferResult(Record):
    config: TransferConfig
    contrast: str
    layers: list[int]
    pairs: list[TransferPair]  # every ordered (source, target), the base model first
    cosines: dict[str, list[float]]  # "A vs B" (each unordered pair once) -> cosine by layer
    out: str


def transfer_directions(cfg: TransferConfig) -> TransferResult:
    """Fit the method on every model, score each model's direction on every model's held-out split;
    write the rows under `<out>/transfer/<contrast>/`."""
    import torch

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
    cosines = {f"{a} vs {b}": [next(r["cosine_to_target_own"] for r in rows if r["source"] == a and r["target"] == b
                                    and r["layer"] == L and r["method"] == "transferred") for L in layers]
               for a, b in pairs}
    found = []
    for src in models:
        for dst in models:
            mine = [r for r in rows if r["source"] == src and r["target"] == dst]
            scores = [LayerScore.from_row(r) for r in mine]
            median = np.median([r["cosine_to_target_own"] for r in mine if r["method"] == "transferred"])
            found.append(TransferPair(src, dst, best_layer(scores, "transferred"), float(median)))
    return TransferResult(cfg, contrast.name, list(layers), found, cosines, str(out))
