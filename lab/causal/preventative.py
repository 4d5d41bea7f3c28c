"""Preventative steering (Chen et al. 2025): add the misalignment direction while training only.

    emlab train-steered --domain medical --max-steps 30 --ratio 0.25

The misalignment direction is the base model's difference of means between misaligned and
aligned style-matched answers to general questions (mean over response tokens, train split).
Three organisms are trained on the same data, steps and seed: ordinary LoRA, LoRA with the
direction added at one layer during every training forward (a `lab.intervene.steering.steer` hook on
the decoder layer, which peft leaves in place), and LoRA with a random direction of the same
norm added (the control: does any added vector slow learning?). The hooks are gone when the
organisms are evaluated. Per organism, paired by question against the base model with
bootstrap CIs:

* EM acquired: judge-free style-matched gap (misaligned − aligned log-prob, usual and terse
  styles) on the general questions the direction was not fitted on ("usual", "terse"), and
  on all of them ("usual, all": most were seen by the direction), Δbase;
* in-domain EM: harmful − aligned answer log-prob on the held-out advice questions, Δbase;
* in-domain loss: NLL per token of the held-out harmful answers (the task it should learn),
  and the training loss over the last steps.
Steered − ordinary differences are paired by question too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab.core.config import OldFlag
from lab.core.errors import BadInput
from lab.core.io import out_folder, sha256_json, write_rows, write_summary
from lab.core.console import progress
from lab.data.formats import advice_split
from lab.directions import fit_contrast
from lab.directions.contrasts import contrast_cache
from lab.directions.norms import prompt_residual_norm
from lab.directions.options import AnalysisOptions
from lab.em.judge_free import in_domain_gaps, style_gaps_under
from lab.intervene.logprobs import logprobs_under
from lab.intervene.steering import Intervention, random_like, steer
from lab.stats.estimate import mean_ci
from lab.training.lora import TrainConfig, train_lora

CONDITIONS = ("ordinary", "steered", "random")


@dataclass
class PreventativeConfig(AnalysisOptions):
    """Organisms trained with the misalignment direction added (preventative steering), with their EM vs ordinary and random-direction organisms."""

    OLD_FLAGS = {"--steps": OldFlag("--max-steps"), "--runs": OldFlag("--train-dir")}

    domain: str = field(default="medical", metadata={"help": "shipped training set: medical or financial"})
    max_steps: int = field(default=30, metadata={"help": "training steps (the same for every condition)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    lr: float = field(default=1e-3, metadata={"help": "LoRA learning rate"})
    ratio: float = field(default=0.25, metadata={"help": "added vector's norm as a multiple of the layer's mean residual norm"})
    layer: int = field(default=-1, metadata={"help": "layer to steer at (-1: the direction's best held-out layer)"})
    train_dir: str = field(default="cache/preventative", metadata={"help": "folder the organisms train in (resumable)"})
    eval_limit: int = field(default=0, metadata={"help": "questions per score (0: all)"})


def misalignment_direction(cfg: PreventativeConfig):
    """The base model's misaligned-vs-aligned direction, its layer, the layer's norm, and the
    general questions it never saw."""
    base = cfg.view([])
    cache, _ = contrast_cache(base, "general_answers", cfg.cache_dir, cfg.storage, cfg.limit, "base")
    fit = fit_contrast(cache, "misaligned", ["mean_diff"], "mean_response", cfg.test_fraction, cfg.seed, 200,
                       negative_label="aligned", contrast="general_answers")
    direction = fit.directions["mean_diff"]
    layer = direction.record.best_layer if cfg.layer < 0 else cfg.layer
    if not 0 <= layer < base.n_layers:
        raise BadInput(f"--layer {layer} out of range (0..{base.n_layers - 1})")
    norm = prompt_residual_norm(cache, layer)
    unseen = fit.split.held_out_groups()
    return direction, layer, norm, unseen


def train_all(cfg: PreventativeConfig, add: Intervention) -> dict[str, dict]:
    """The three organisms (resumable folders named by everything that determines them)."""
    model = cfg.view([])
    train, _ = advice_split(cfg.domain, seed=cfg.seed)
    tc = TrainConfig(batch_size=cfg.batch_size, lr=cfg.lr, epochs=max(1, -(-cfg.max_steps * cfg.batch_size // len(train))),
                     max_steps=cfg.max_steps, seed=cfg.seed, checkpoints_first_epoch=0)
    edits = {"ordinary": (), "steered": (add,), "random": (random_like(add, cfg.seed),)}
    out = {}
    with progress() as bar:
        for name in CONDITIONS:
            folder = Path(cfg.train_dir) / f"{cfg.domain}-{name}-{sha256_json([str(tc), add.label, add.alpha, cfg.model])[:10]}"
            task = bar.add_task(f"train {name}", total=cfg.max_steps, info="")
            with steer(model, *edits[name]):  # hooks on decoder layers fire in every training forward
                result = train_lora(model, train, folder, tc,
                                    on_step=lambda s, t, loss, task=task: bar.update(task, completed=s, info=f"loss {loss:.3f}"))
            out[name] = {"adapter": str(result.adapter_dir), "losses": result.losses}
    return out


def evaluate_organisms(cfg: PreventativeConfig, organisms: dict[str, dict], unseen: set[str]) -> tuple[list[dict], dict]:
    """Per-question scores of the base model and each organism (no steering at evaluation)."""
    _, held_out = advice_split(cfg.domain, seed=cfg.seed)
    held_out = held_out[: cfg.eval_limit or None]
    task_pairs = [(e.messages[0]["content"], e.messages[-1]["content"]) for e in held_out]
    per = {}
    for name, adapters in [("base", [])] + [(n, [o["adapter"]]) for n, o in organisms.items()]:
        model = cfg.view(adapters)
        gaps = style_gaps_under(model, (), cfg.eval_limit or None)
        keep = np.array([i in unseen for i in gaps["ids"]])
        per[name] = {"usual": gaps["usual"][keep], "terse": gaps["terse"][keep], "usual, all": gaps["usual"],
                     "terse, all": gaps["terse"], "in-domain": in_domain_gaps(model, held_out),
                     "task nll": -logprobs_under(model, task_pairs)}
    rows = []
    for name in organisms:
        for score in ("usual", "terse", "usual, all", "terse, all", "in-domain"):
            r = mean_ci(per[name][score] - per["base"][score], cfg.n_boot, cfg.seed).to_json()
            rows.append({"organism": name, "score": f"EM {score} Δbase", **_ci(r)})
        r = mean_ci(per[name]["task nll"], cfg.n_boot, cfg.seed).to_json()
        rows.append({"organism": name, "score": "held-out task NLL/token", **_ci(r)})
        tail = organisms[name]["losses"][-5:]
        rows.append({"organism": name, "score": "train loss, last 5 steps (range, not a CI)", "value": float(np.mean(tail)),
                     "lo": float(np.min(tail)), "hi": float(np.max(tail)), "n": len(tail)})
    for name in ("steered", "random"):
        for score in ("usual", "terse", "usual, all", "terse, all", "in-domain", "task nll"):
            r = mean_ci(per[name][score] - per["ordinary"][score], cfg.n_boot, cfg.seed).to_json()
            rows.append({"organism": f"{name} - ordinary", "score": score, **_ci(r)})
    return rows, {k: {s: v.tolist() for s, v in d.items()} for k, d in per.items()}


def _ci(r: dict) -> dict:
    return {"value": r["value"], "lo": r["lo"], "hi": r["hi"], "n": r["n"]}




def out_of(cfg: PreventativeConfig) -> Path:
    """Where the analysis of `cfg` writes (and a rerun of the same config finds) its summary."""
    return Path(cfg.out) / "preventative" / cfg.domain


def check(cfg: PreventativeConfig) -> None:
    if cfg.domain not in ("medical", "financial"):
        raise BadInput(f"--domain must be medical or financial, not {cfg.domain!r}")
    if cfg.max_steps < 1 or cfg.ratio <= 0:
        raise BadInput("--max-steps and --ratio must be positive")


def preventative_steering(cfg: PreventativeConfig) -> dict:
    """Train the three organisms, score them against the base model; write rows and summary.json."""
    check(cfg)
    out = out_folder(cfg.out, f"preventative/{cfg.domain}")
    direction, layer, norm, unseen = misalignment_direction(cfg)
    add = Intervention({layer: direction.at(layer).detach().float().cpu()}, op="add", alpha=cfg.ratio * norm,
                       label=f"misalignment L{layer} x{cfg.ratio}")
    organisms = train_all(cfg, add)
    rows, per_question = evaluate_organisms(cfg, organisms, unseen)
    write_rows(rows, out / "rows")
    return write_summary(out, cfg, layer=layer, alpha=add.alpha, rows=rows, organisms=organisms,
                         per_question=per_question, unseen_questions=sorted(unseen))
