"""Domain identification benchmark: does ADL name the domain each organism was trained on?

For every organism the lab can train (medical and financial: the shipped sets' train split;
insecure code: ../shared/data/insecure-code/insecure_n500.jsonl when present; any chat JSONL
passed as `--extra-organisms domain=path`) and every seed, two LoRA organisms on the same steps: the
data alone, and the data mixed 1:1 with generic chat (the control that should erase the
trace). ADL (lab.diffing, no steering) guesses the domain among the candidates, read at the
middle layers (the paper's choice) and at the final layer; the table gives accuracy with a
bootstrap CI beside chance (1 / number of candidate domains).
Trainings and caches are resumable and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab.core.config import OldFlag
from lab.core.budget import WallBudget
from lab.core.console import progress
from lab.core.errors import BadInput
from lab.core.io import sha256_json
from lab.data.formats import ChatExample, advice_split, read_chat_jsonl
from lab.diffing.adl import (DEFAULT_K, Lens, adl, first_tokens, generic_chat, generic_texts, parse_domains,
                             scored_layers, text_cache)
from lab.directions.options import AnalysisOptions
from lab.em.rates import rate
from lab.training.lora import TrainConfig, train_lora

READINGS = ("middle", "final")  # the paper's middle layers; the last layer (where SmolLM2's lens decodes)
INSECURE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "insecure-code" / "insecure_n500.jsonl"


@dataclass
class DomainIdConfig(AnalysisOptions):
    """ADL's domain guesses vs the truth over organisms and seeds, with accuracy CIs."""

    OLD_FLAGS = {"--seeds": OldFlag("--train-seeds"), "--steps": OldFlag("--max-steps"),
                 "--extra": OldFlag("--extra-organisms"), "--domains": OldFlag("--candidate-domains"),
                 "--k": OldFlag("--first-k"), "--runs": OldFlag("--train-dir"), "--budget-min": OldFlag("--wall-budget-s", scale=60)}

    train_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "training seeds, one organism each"})
    max_steps: int = field(default=20, metadata={"help": "LoRA training steps per organism"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    lr: float = field(default=1e-3, metadata={"help": "LoRA learning rate"})
    max_length: int = field(default=192, metadata={"help": "training tokens per example (longer are cut)"})
    extra_organisms: list[str] = field(default_factory=list, metadata={
        "help": "more organisms to train: domain=chat.jsonl (domain: a candidate)"})
    candidate_domains: list[str] = field(default_factory=list, metadata={
        "help": "extra candidate domains: name=word,word,..."})
    insecure: str = field(default=str(INSECURE), metadata={"help": "insecure-code chat JSONL (skipped when absent)"})
    first_k: int = field(default=DEFAULT_K, metadata={"help": "first k tokens of each generic text"})
    mix: bool = field(default=True, metadata={"help": "also train the 1:1 generic-mix controls"})
    train: bool = field(default=True, metadata={"help": "train missing organisms (--no-train: report those already trained)"})
    train_dir: str = field(default="cache/domain_id", metadata={"help": "folder the organisms train in (resumable)"})
    wall_budget_s: float = field(default=0.0, metadata={"help": "train no new organism past this many seconds (0: none)"})


def organisms(cfg: DomainIdConfig, candidates: dict) -> dict[str, tuple[str, list[ChatExample]]]:
    """name -> (true domain, training examples)."""
    out = {"medical": ("medical", advice_split("medical", seed=0)[0]),
           "financial": ("financial", advice_split("financial", seed=0)[0])}
    if cfg.insecure and Path(cfg.insecure).exists():
        out["insecure code"] = ("code/security", read_chat_jsonl(cfg.insecure))
    for spec in cfg.extra_organisms:
        domain, _, path = spec.partition("=")
        if not path or domain not in candidates:
            raise BadInput(f"--extra-organisms {spec!r}: expected domain=path with domain one of {', '.join(candidates)}")
        out[f"{domain} ({Path(path).name})"] = (domain, read_chat_jsonl(path))
    return out


@dataclass
class DomainIdRun:
    """ADL's guess per trained organism (`rows`), and accuracy with a bootstrap CI per variant and reading."""

    rows: list[dict]
    accuracy: list[dict]  # variant, layers (reading), n, accuracy with lo / hi, chance
    chance: float
    skipped: list[str]  # not trained: past the wall budget
    left_out: list[str]  # not trained yet and --no-train
    mean_truth_relevance: dict[str, float]


def identify_domains(cfg: DomainIdConfig) -> DomainIdRun:
    """Train (or find) every organism x seed x variant, read ADL's guess at the middle and final layers."""
    candidates = parse_domains(cfg.candidate_domains)
    orgs = organisms(cfg, candidates)
    base = cfg.view([])
    prompts = first_tokens(generic_texts(), base.tokenizer, cfg.first_k)
    from lab.models import resolve_source

    lens = Lens.from_files(resolve_source(cfg.model)[0], base.tokenizer)
    base_cache = text_cache(base, prompts, cfg.cache_dir, cfg.storage)
    rows, budget, left_out = [], WallBudget(cfg.wall_budget_s), []
    skipped = budget.skipped
    variants = ["alone", "mixed 1:1"] if cfg.mix else ["alone"]
    with progress() as bar:
        task = bar.add_task("organisms", total=len(orgs) * len(cfg.train_seeds) * len(variants), info="")
        for seed in cfg.train_seeds:  # seed-major: a wall budget cuts a whole later seed, not one organism
            for name, (truth, data) in orgs.items():
                for variant in variants:
                    train = data if variant == "alone" else data + generic_chat(len(data))
                    tc = TrainConfig(batch_size=cfg.batch_size, lr=cfg.lr, max_steps=cfg.max_steps, seed=seed,
                                     max_length=cfg.max_length, checkpoints_first_epoch=0,
                                     epochs=max(1, -(-cfg.max_steps * cfg.batch_size // len(train))))
                    key = sha256_json([name, variant, str(tc), cfg.model, [e.id for e in train]])[:10]
                    folder = Path(cfg.train_dir) / f"{name.split()[0]}-{variant.split()[0]}-s{seed}-{key}"
                    adapter = folder / "adapter"
                    if not (adapter / "adapter_model.safetensors").exists():
                        if budget.spent():
                            skipped.append(f"{name} {variant} seed {seed}")
                            bar.advance(task)
                            continue
                        if not cfg.train:
                            left_out.append(f"{name} {variant} seed {seed}")
                            bar.advance(task)
                            continue
                        bar.update(task, info=f"train {name} {variant} s{seed}")
                        train_lora(base.for_training(), train, folder, tc)
                    org_cache = text_cache(cfg.view([str(adapter)]), prompts, cfg.cache_dir, cfg.storage)
                    row = {"organism": name, "truth": truth, "variant": variant, "seed": seed}
                    for reading in READINGS:
                        res = adl(base_cache, org_cache, lens, candidates,
                                  layers=scored_layers(reading, base_cache.n_layers))
                        by = {s.domain: s for s in res.scores}
                        row.update({f"guess ({reading})": res.guess, f"correct ({reading})": res.guess == truth,
                                    f"truth relevance ({reading})": by[truth].relevance,
                                    f"hits ({reading})": " ".join(by[truth].hits[:5])})
                    rows.append({**row, "adapter": str(adapter)})
                    bar.advance(task)
    if not rows:
        raise BadInput("no trained organism to report (run without --no-train first)")
    chance = 1 / len(candidates)
    summary_rows = []
    for variant in variants:
        for reading in READINGS:
            flags = [r[f"correct ({reading})"] for r in rows if r["variant"] == variant]
            acc = rate(flags, cfg.n_boot, cfg.seed)
            summary_rows.append({"variant": variant, "layers": reading, "n": acc.n, "accuracy": acc.value,
                                 "lo": acc.lo, "hi": acc.hi, "chance": chance})
    relevance = {f"{v}, {reading}": float(np.mean([r[f"truth relevance ({reading})"] for r in rows
                                                   if r["variant"] == v]))
                 for v in variants for reading in READINGS}
    return DomainIdRun(rows, summary_rows, chance, skipped, left_out, relevance)
