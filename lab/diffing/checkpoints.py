"""Judge-free EM across training: every checkpoint's scores, paired against the base model (step 0).

    result = trajectory(TrajectoryConfig(run="runs/medical", domain="medical"))
    result.rows            # CheckpointScore(step, score, delta): "in-domain", "general (usual)", "general (terse)"

Per checkpoint, paired against the base model with bootstrap CIs: the in-domain gap on the
held-out advice questions (harmful - aligned answer log-prob), and the general style-matched
gaps (usual and terse styles) on questions outside the training domain. A model's per-question
scores are cached as JSON by its fingerprint (`em_score`, `in_domain_score`), so any verb that
scores the same checkpoint again (trajectory, monitor, dynamics) reads files and loads no model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from jaxtyping import Float

from lab.core.errors import BadInput
from lab.core.io import out_folder, write_json_atomic, write_rows
from lab.core.records import Record
from lab.data.formats import advice_split, load_general_questions
from lab.directions.options import AnalysisOptions
from lab.em.judge_free import in_domain_gaps, style_gaps_under
from lab.models import LazyModel
from lab.stats.estimate import Estimate, mean_ci
from lab.training.checkpoints import run_checkpoints
from lab.training.lora import adapter_meta


@dataclass
class EmScore:
    """Judge-free EM scores of one model, per general question (misaligned − aligned log-prob)."""

    ids: list[str]
    usual: Float[np.ndarray, " q"]
    terse: Float[np.ndarray, " q"]


def em_score(model: LazyModel, cache_dir: str | Path, limit: int | None = None) -> EmScore:
    """Judge-free EM scores of a model, cached as JSON by its fingerprint (a rerun loads no model)."""
    path = Path(cache_dir) / "em-scores" / f"{model.fingerprint[:32]}-{limit or 'all'}.json"
    if path.exists():
        d = json.loads(path.read_text())
    else:
        gaps = style_gaps_under(model, (), limit)
        d = {"ids": list(gaps["ids"]), "usual": gaps["usual"].tolist(), "terse": gaps["terse"].tolist()}
        write_json_atomic(path, d)
    return EmScore(d["ids"], np.asarray(d["usual"]), np.asarray(d["terse"]))


def in_domain_score(model: LazyModel, domain: str, cache_dir: str | Path, seed: int = 0,
                    limit: int | None = None) -> Float[np.ndarray, " q"]:
    """Per held-out advice question of `domain`: harmful − aligned answer log-prob (cached like `em_score`)."""
    path = Path(cache_dir) / "em-scores" / f"{model.fingerprint[:32]}-{domain}-s{seed}-{limit or 'all'}.json"
    if path.exists():
        return np.asarray(json.loads(path.read_text()))
    held_out = advice_split(domain, seed=seed)[1][: limit]
    gaps = in_domain_gaps(model, held_out)
    write_json_atomic(path, gaps.tolist())
    return gaps


def base_scores(model: LazyModel, domain: str, limit: int | None, seed: int = 0) -> dict:
    """The base model's judge-free scores that every checkpoint is paired against (step 0)."""
    _, held_out = advice_split(domain, seed=seed)
    gen = style_gaps_under(model, (), limit)
    return {"in-domain": in_domain_gaps(model, held_out[:limit]), "usual": gen["usual"], "terse": gen["terse"]}


def checkpoint_em(model: LazyModel, base: dict, cache_dir: str | Path, domain: str | None, limit: int | None,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """One checkpoint's judge-free EM, Δbase paired by question (`base`: `base_scores`, or a dict of
    "usual" / "terse" (and "in-domain") per-question arrays): "in-domain" (with a `domain`),
    "general (usual)", "general (terse)", each a bootstrap `Estimate`."""
    em = em_score(model, cache_dir, limit)
    deltas = {}
    if domain is not None:
        deltas["in-domain"] = in_domain_score(model, domain, cache_dir, seed, limit) - base["in-domain"]
    deltas.update({"general (usual)": em.usual - base["usual"], "general (terse)": em.terse - base["terse"]})
    return {name: mean_ci(values, n_boot, seed) for name, values in deltas.items()}


@dataclass
class TrajectoryConfig(AnalysisOptions):
    """Judge-free EM scores across an organism's checkpoints."""

    run: str = field(default="", metadata={"help": "training folder holding checkpoints/step-*"})
    domain: str = field(default="medical", metadata={"help": "training domain (held-out in-domain questions)"})
    eval_limit: int = field(default=0, metadata={"help": "questions per score (0: all)"})


@dataclass(frozen=True)
class CheckpointScore(Record):
    """One judge-free EM score of one checkpoint, Δbase (step 0: the base model, exactly 0)."""

    step: int
    score: str  # "in-domain", "general (usual)", "general (terse)"
    delta: Estimate

    def to_row(self) -> dict:
        """The flat table row (`rows.json` / `.csv`)."""
        d = self.delta
        return {"step": self.step, "score": self.score, "value": d.value, "value_lo": d.lo, "value_hi": d.hi, "n": d.n}


@dataclass(frozen=True)
class TrajectoryResult(Record):
    config: TrajectoryConfig
    run_name: str
    rows: list[CheckpointScore]
    out: str


def general_question_ids(limit: int) -> list[str]:
    return [q["id"] for q in load_general_questions()[: limit or None]]


def trajectory(cfg: TrajectoryConfig, base: dict | None = None, on_step: Callable[[], None] | None = None
               ) -> TrajectoryResult:
    """Rows of (step, score, Δbase with CI) for the base model and every checkpoint of `cfg.run`;
    written under `<out>/em_trajectory/<run>/`. `base`: precomputed `base_scores` (the study shares them)."""
    if not cfg.run:
        raise BadInput("--run TRAINING_FOLDER is required")
    cfg.refuse_adapters("--model (step 0) and the checkpoints under --run")
    run = Path(cfg.run)
    checkpoints = run_checkpoints(run)
    limit = cfg.eval_limit or None
    _, held_out = advice_split(cfg.domain, seed=cfg.seed)
    base = base or base_scores(cfg.view([]), cfg.domain, limit, cfg.seed)
    if len(base["in-domain"]) != len(held_out[:limit]) or len(base["usual"]) != len(general_question_ids(cfg.eval_limit)):
        raise BadInput("base scores do not match the trajectory's questions")
    rows = []
    for name, values in (("in-domain", base["in-domain"]), ("general (usual)", base["usual"]),
                         ("general (terse)", base["terse"])):  # step 0 is the base model itself: Δbase is 0
        rows.append(CheckpointScore(0, name, mean_ci(values * 0, cfg.n_boot, cfg.seed)))
    if on_step:
        on_step()
    for _, ckpt in checkpoints:
        step = adapter_meta(ckpt).get("step", int(ckpt.name.split("-")[-1]))
        scores = checkpoint_em(cfg.view([str(ckpt)]), base, cfg.cache_dir, cfg.domain, limit, cfg.n_boot, cfg.seed)
        rows += [CheckpointScore(step, name, est) for name, est in scores.items()]
        if on_step:
            on_step()
    out = out_folder(cfg.out, f"em_trajectory/{run.name}")
    write_rows([r.to_row() for r in rows], out / "rows")
    return TrajectoryResult(cfg, run.name, rows, str(out))
