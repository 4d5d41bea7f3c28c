"""Which domain was this organism trained on? The Activation Difference Lens on one adapter, and δ-steering.

Mean residual difference (organism − base) over the first k tokens of generic text, per
layer, read through the base model's logit lens; each candidate domain scored by how many
of the top tokens over the middle layers are its words (`lab.diffing.adl`); then the base
model steered with δ at half depth (coherence-guarded, beside a random direction of the same
norm), showing the answers. Activations and steering results are cached: a rerun loads no model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.core.config import OldFlag
from lab.core.errors import BadInput
from lab.core.io import sha256_json, write_json_atomic
from lab.diffing.adl import (DEFAULT_K, AdlResult, Lens, SteerRow, adl, first_tokens, generic_texts, parse_domains,
                             scored_layers, steer_with_delta, text_cache, with_shares)
from lab.directions.norms import token_residual_norms
from lab.directions.options import AnalysisOptions


@dataclass
class DiffConfig(AnalysisOptions):
    """The domain an adapter was trained on, read from activation differences on generic text (ADL)."""

    OLD_FLAGS = {"--k": OldFlag("--first-k"), "--domains": OldFlag("--candidate-domains"), "--show": OldFlag("--top-tokens"),
                 "--questions": OldFlag("--eval-limit")}

    adapter: str = field(default="", metadata={"help": "PEFT adapter of the base model to diff against it"})
    first_k: int = field(default=DEFAULT_K, metadata={"help": "first k tokens of each generic text (position 0 skipped)"})
    texts: str = field(default="", metadata={"help": "extra generic texts: a text file (one a line) or JSONL with text"})
    candidate_domains: list[str] = field(default_factory=list, metadata={
        "help": "extra candidate domains: name=word,word,... (built in: medical, financial, code/security)"})
    top: int = field(default=20, metadata={"help": "logit-lens top tokens per layer"})
    layers: str = field(default="middle", metadata={
        "help": "layers scored for the domain guess: middle (25-75%% depth, the paper's), final, or 3,7,12"})
    top_tokens: int = field(default=10, metadata={"help": "top tokens printed per layer"})
    steer: bool = field(default=True, metadata={"help": "steer the base model with δ and show its answers"})
    steer_layer: int = field(default=-1, metadata={"help": "layer to steer at (-1: half depth)"})
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0],
                                metadata={"help": "steering strength as a multiple of the layer's mean residual norm"})
    coherence_floor: float = field(default=-0.5, metadata={"help": "lowest acceptable neutral log-prob change/token"})
    eval_limit: int = field(default=6, metadata={"help": "general questions answered under steering"})
    max_new_tokens: int = field(default=40, metadata={"help": "tokens per steered answer (greedy)"})


def organism_adapters(cfg: DiffConfig) -> list[str]:
    adapters = [cfg.adapter] if cfg.adapter else list(cfg.adapters)
    if not adapters:
        raise BadInput("--adapter DIR is required (a PEFT adapter of the base model)")
    for a in adapters:
        if not Path(a).is_dir():
            raise BadInput(f"{a}: no such adapter folder")
    return adapters


def lens_for(cfg: DiffConfig, base) -> Lens:
    """The base model's final norm + unembedding, from its files when it is a local folder."""
    from lab.models import resolve_source

    path = Path(resolve_source(cfg.model)[0])
    if path.is_dir():
        return Lens.from_files(path, base.tokenizer)
    hf = base.hf  # a hub id: take the weights from the loaded model
    return Lens(hf.model.norm.weight.detach().float().cpu(), hf.get_output_embeddings().weight.detach().float().cpu(),
                float(getattr(hf.config, "rms_norm_eps", 1e-6)), base.tokenizer)


def diff_adapter(cfg: DiffConfig, adapters: list[str]) -> tuple[AdlResult, list[SteerRow], int]:
    """ADL and (optionally) δ-steering for one organism; caches make a rerun file-only."""
    base, organism = cfg.view([]), cfg.view(adapters)
    prompts = first_tokens(generic_texts(cfg.texts or None), base.tokenizer, cfg.first_k)
    base_cache = text_cache(base, prompts, cfg.cache_dir, cfg.storage)
    org_cache = text_cache(organism, prompts, cfg.cache_dir, cfg.storage)
    domains = parse_domains(cfg.candidate_domains)
    result = adl(base_cache, org_cache, lens_for(cfg, base), domains, cfg.top, scored_layers(cfg.layers, base.n_layers))
    layer = base.n_layers // 2 if cfg.steer_layer < 0 else cfg.steer_layer
    if not 0 <= layer < base.n_layers:
        raise BadInput(f"--steer-layer {layer} out of range (0..{base.n_layers - 1})")
    rows: list[SteerRow] = []
    if cfg.steer:
        key = sha256_json({"base": base.fingerprint, "delta": sha256_json(result.delta[layer].tolist()),
                           "layer": layer, "ratios": cfg.ratios, "q": cfg.eval_limit,
                           "tokens": cfg.max_new_tokens, "seed": cfg.seed})
        path = Path(cfg.cache_dir) / "adl-steer" / f"{key[:20]}.json"
        if path.exists():
            rows = with_shares([SteerRow(**r) for r in json.loads(path.read_text())], domains)
        else:
            norm = float(token_residual_norms(base_cache)[layer])
            rows = steer_with_delta(base, result.delta[layer], layer, norm, cfg.ratios, domains,
                                    cfg.eval_limit, cfg.max_new_tokens, seed=cfg.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, [asdict(r) for r in rows])
    return result, rows, layer


def picked(rows: list[SteerRow], floor: float) -> SteerRow | None:
    """The strongest δ steering whose coherence change stays above the floor."""
    ok = [r for r in rows if r.condition == "delta" and r.coherence >= floor]
    return max(ok, key=lambda r: r.ratio) if ok else None
