"""Training dynamics of rank-1 organisms, against their EM trajectory, and LoRA adapter probing.

Per recipe (`lab.training.lora.RECIPES`: `mo-rank1`, one rank-1 down_proj adapter at half depth;
`mo-rank1x9`, nine), one organism is trained on the shipped domain's train split with a
checkpoint every ~`--checkpoint-every` steps (`checkpoints_first_epoch`), then per checkpoint (lab.diffing.dynamics):
|B·A|, the local cosine of the adapter vector B between checkpoints k steps apart (`--step-gaps`),
its PCA path, and the judge-free EM scores, Δbase paired by question with bootstrap CIs and cached by
model (`lab.diffing.monitoring`): general questions (usual and terse styles) and held-out in-domain questions
(harmful − aligned answer log-prob).
The lowest local cosine marks the most abrupt rotation; it is set beside the step where EM
rises.

LoRA probing (the final adapter of every run): each adapter's per-token scalar A·x on answer
tokens, two L1 logistic probes, held out by question: in-domain answers (held-out advice
questions) vs general-question answers, and misaligned vs aligned answers; the control is
the same probe on scalars read by random A vectors of the same norms. Trainings, EM scores
and probe features are cached: a rerun loads no model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lab.core.config import OldFlag
from lab.core.budget import WallBudget
from lab.core.errors import BadInput
from lab.core.io import out_folder, sha256_json, write_rows
from lab.data.formats import ChatExample, advice_split, load_general_questions
from lab.diffing.checkpoints import checkpoint_em, em_score, in_domain_score
from lab.diffing.dynamics import (AdapterPath, Rank1, adapter_scalars, local_cosine, lora_probe, pca_path, read_rank1,
                                  transition)
from lab.directions.options import AnalysisOptions
from lab.training.checkpoints import run_checkpoints
from lab.training.lora import RECIPES, recipe_config, split_training, train_lora

@dataclass
class DynamicsConfig(AnalysisOptions):
    """Rank-1 adapters over training: norm, local cosine, PCA path vs EM; L1 probing of the adapters."""

    OLD_FLAGS = {"--steps": OldFlag("--max-steps"), "--every": OldFlag("--checkpoint-every"), "--ks": OldFlag("--step-gaps"),
                 "--runs": OldFlag("--train-dir"), "--budget-min": OldFlag("--wall-budget-s", scale=60)}

    domain: str = field(default="medical", metadata={"help": "shipped training set: medical or financial"})
    recipes: list[str] = field(default_factory=lambda: ["mo-rank1", "mo-rank1x9"], metadata={"help": "rank-1 recipes"})
    lr: float = field(default=0.0, metadata={"help": "learning rate (0: the recipe's)"})
    batch_size: int = field(default=2, metadata={"help": "batch size (small: many steps per epoch)"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation"})
    epochs: int = field(default=1, metadata={"help": "epochs (checkpoints every ~N steps in the first)"})
    max_steps: int = field(default=0, metadata={"help": "stop training after this many steps (0: the epochs)"})
    checkpoint_every: int = field(default=5, metadata={"help": "checkpoint every ~N steps of the first epoch"})
    step_gaps: list[int] = field(default_factory=lambda: [5, 10, 15], metadata={
        "help": "step gaps of the local cosines between checkpoints' adapter directions"})
    eval_limit: int = field(default=0, metadata={"help": "general questions per EM score (0: all 48)"})
    probe_limit: int = field(default=0, metadata={"help": "questions per probe class (0: all)"})
    probe_c: float = field(default=0.05, metadata={"help": "L1 probe inverse regularisation"})
    train_dir: str = field(default="cache/dynamics", metadata={"help": "folder the organisms train in (resumable)"})
    wall_budget_s: float = field(default=0.0, metadata={"help": "start no new work past this many seconds (0: none)"})


def train_config(cfg: DynamicsConfig, recipe: str, n_examples: int):
    if recipe not in RECIPES or "rank1" not in recipe:
        raise BadInput(f"--recipes: {recipe!r} is not a rank-1 recipe (one of "
                       f"{', '.join(r for r in RECIPES if 'rank1' in r)})")
    per_epoch = -(-n_examples // (cfg.batch_size * cfg.grad_accum))
    return recipe_config(recipe, lr=cfg.lr or None, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                         epochs=cfg.epochs, max_steps=cfg.max_steps or None, seed=cfg.seed,
                         checkpoints_first_epoch=max(1, round(per_epoch / max(1, cfg.checkpoint_every))))


def probe_examples(domain: str, limit: int, seed: int) -> tuple[list[ChatExample], list[int], list[int], list[str]]:
    """Teacher-forced answers: held-out in-domain questions (harmful and aligned answer) and general
    questions (misaligned and aligned, usual style). Returns examples, in-domain labels, misaligned labels, groups."""
    _, held = advice_split(domain, seed=seed)
    rows = [(e.id, e.messages[0]["content"], e.meta["aligned"], e.messages[-1]["content"], 1) for e in held[: limit or None]]
    rows += [(q["id"], q["question"], q["aligned_usual"], q["misaligned_usual"], 0)
             for q in load_general_questions()[: limit or None]]
    ex, dom, mis, groups = [], [], [], []
    for qid, question, aligned, misaligned, in_domain in rows:
        for bad, answer in ((0, aligned), (1, misaligned)):
            ex.append(ChatExample([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                  f"{qid}:{'m' if bad else 'a'}"))
            dom.append(in_domain), mis.append(bad), groups.append(qid)
    return ex, dom, mis, groups


def random_control(adapters: list[Rank1], seed: int) -> list[Rank1]:
    """Random A vectors of the same norms at the same layers."""
    rng = np.random.default_rng([seed, 99])
    out = []
    for a in adapters:
        r = rng.standard_normal(a.A.shape).astype(np.float32)
        out.append(Rank1(a.layer, r * np.linalg.norm(a.A) / np.linalg.norm(r), a.B))
    return out


def cached_scalars(cfg: DynamicsConfig, adapter: Path, adapters: list[Rank1], examples: list[ChatExample]
                   ) -> list[np.ndarray]:
    """Per-token adapter scalars of the organism on `examples`, from file when computed before."""
    handle = cfg.view([str(adapter)])
    key = sha256_json([handle.fingerprint, [e.id for e in examples], [e.messages for e in examples],
                       [sha256_json(a.A.tolist()) for a in adapters]])[:24]
    path = Path(cfg.cache_dir) / "lora-probe" / f"{key}.npz"
    if path.exists():
        z = np.load(path)
        return np.split(z["x"], np.cumsum(z["n"])[:-1])
    feats = adapter_scalars(handle, adapters, examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    np.savez(tmp, x=np.concatenate(feats), n=np.array([len(f) for f in feats]))
    tmp.rename(path)
    return feats


def probe(cfg: DynamicsConfig, adapter: Path) -> list[dict]:
    adapters = read_rank1(adapter)
    examples, dom, mis, groups = probe_examples(cfg.domain, cfg.probe_limit, cfg.seed)
    n = len(adapters)
    both = cached_scalars(cfg, adapter, adapters + random_control(adapters, cfg.seed), examples)
    layers = [a.layer for a in adapters]
    rows = []
    for task, labels in ((f"{cfg.domain} vs general answers", dom), ("misaligned vs aligned answers", mis)):
        for control, feats in (("adapters' A", [f[:, :n] for f in both]), ("random A, same norms", [f[:, n:] for f in both])):
            res = lora_probe(feats, labels, groups, layers, cfg.probe_c, 0.3, cfg.seed, cfg.n_boot)
            rows.append({"task": task, "features": control, **asdict(res)})
    return rows


@dataclass
class DynamicsRun:
    """Per recipe: the training folder, the adapter path's geometry, EM by checkpoint and the probes;
    `panels` holds what each recipe's figure is drawn from (`lab.reports.plots.dynamics_panel`)."""

    runs: dict[str, dict]
    panels: dict[str, dict]
    skipped: list[str]
    seconds: float
    out: Path


def rank1_dynamics(cfg: DynamicsConfig) -> DynamicsRun:
    """Train each rank-1 recipe (resumable), then measure its checkpoints and probe its final adapter;
    trainings, EM scores and probe features are cached, so a rerun loads no model."""
    cfg.refuse_adapters("the organisms this verb trains")
    if cfg.domain not in ("medical", "financial"):
        raise BadInput(f"--domain must be medical or financial, not {cfg.domain!r}")
    budget = WallBudget(cfg.wall_budget_s)
    over = budget.spent
    base = cfg.view([])
    train, _ = advice_split(cfg.domain, seed=cfg.seed)
    limit = cfg.eval_limit or None
    base_em = em_score(base, cfg.cache_dir, limit)
    base_dom = in_domain_score(base, cfg.domain, cfg.cache_dir, cfg.seed, limit)
    base_scores = {"usual": base_em.usual, "terse": base_em.terse, "in-domain": base_dom}
    out = out_folder(cfg.out, f"dynamics/{cfg.domain}")
    runs, panels, skipped = {}, {}, budget.skipped
    for recipe in cfg.recipes:
        if over():
            skipped.append(f"{recipe}: not started (wall budget)")
            continue
        tc = train_config(cfg, recipe, len(split_training(train, recipe_config(recipe, seed=cfg.seed))[0]))
        folder = Path(cfg.train_dir) / f"{cfg.domain}-{recipe}-{sha256_json([str(tc), cfg.model])[:10]}"
        if not (folder / "adapter" / "adapter_model.safetensors").exists():
            train_lora(base.for_training(), train, folder, tc)
        ckpts = run_checkpoints(folder)
        path = AdapterPath.from_checkpoints([p for _, p in ckpts], [s for s, _ in ckpts])
        local = {k: local_cosine(path.vectors, path.steps, k) for k in cfg.step_gaps}
        pca = pca_path(path.vectors)
        settled = tc.warmup_steps + cfg.checkpoint_every  # past the warm-up, where B grows out of zero in no settled direction
        em_rows = [{"step": 0, "value": 0.0, "lo": 0.0, "hi": 0.0, "terse": 0.0, "terse_lo": 0.0, "terse_hi": 0.0,
                    "in_domain": 0.0, "in_domain_lo": 0.0, "in_domain_hi": 0.0}]
        for step, ck in ckpts:
            if over():
                skipped.append(f"{recipe}: EM scores from step {step} on (wall budget)")
                break
            em = checkpoint_em(cfg.view([str(ck)]), base_scores, cfg.cache_dir, cfg.domain, limit, cfg.n_boot, cfg.seed)
            u, t, d = em["general (usual)"], em["general (terse)"], em["in-domain"]
            em_rows.append({"step": step, "value": u.value, "lo": u.lo, "hi": u.hi, "terse": t.value, "terse_lo": t.lo,
                            "terse_hi": t.hi, "in_domain": d.value, "in_domain_lo": d.lo, "in_domain_hi": d.hi})
        by_step = {r["step"]: r for r in em_rows}
        rows = []
        for i, s in enumerate(path.steps):
            row = {"recipe": recipe, "step": s, "norm": float(path.norms[i].sum()),
                   **{f"norm L{L}": float(path.norms[i, j]) for j, L in enumerate(path.layers)},
                   **{f"cos k={k}": next((c for t, _, c in local[k] if t == s), None) for k in cfg.step_gaps},
                   "pc1": float(pca.coords[i, 0]), "pc2": float(pca.coords[i, 1]) if pca.coords.shape[1] > 1 else 0.0}
            if s in by_step:
                e = by_step[s]
                row.update({"EM usual": e["value"], "EM usual lo": e["lo"], "EM usual hi": e["hi"], "EM terse": e["terse"],
                            "EM in-domain": e["in_domain"], "EM in-domain lo": e["in_domain_lo"],
                            "EM in-domain hi": e["in_domain_hi"]})
            rows.append(row)
        probes = []
        if over():
            skipped.append(f"{recipe}: LoRA probe (wall budget)")
        else:
            probes = probe(cfg, folder / "adapter")
        panels[recipe] = {"steps": path.steps, "norms": path.norms.sum(1).tolist(),
                          "local": {k: [(s, c) for s, _, c in v] for k, v in local.items()}, "coords": pca.coords,
                          "em": em_rows, "title": f"{cfg.domain} {recipe} (adapters at layers {path.layers})"}
        runs[recipe] = {"folder": str(folder), "train_config": asdict(tc), "layers": path.layers, "rows": rows,
                        "em": em_rows, "pca_explained": pca.explained.tolist(), "probes": probes,
                        "transition": {str(k): transition(local[k], settled) for k in cfg.step_gaps},
                        "transition_any_step": {str(k): transition(local[k]) for k in cfg.step_gaps}, "settled_from": settled,
                        "em_rise_step": em_rise(em_rows)}
        write_rows(rows, out / f"{recipe}-rows")
    return DynamicsRun(runs, panels, skipped, budget.elapsed(), out)


def em_rise(em_rows: list[dict]) -> int | None:
    """The first checkpoint whose usual-style EM Δbase CI lies above 0 (None: never)."""
    return next((r["step"] for r in em_rows if r["step"] > 0 and r["lo"] > 0), None)
