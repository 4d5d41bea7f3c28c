"""Train organisms on one model and measure them against the base model, judge-free, with CIs.

    python -m experiments.organisms --model qwen2.5-coder-0.5b-instruct --organisms medical \\
        --insecure-code ../shared/data/insecure-code/insecure_n500.jsonl --train-steps 20

Reports, per organism, the in-domain score on held-out questions, the style-matched general
scores, and the code-mode rate of sampled answers to general (non-code) questions vs the base
model's (seed 000's "mode confusion" for insecure-code organisms). Stages are cached like the study's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from experiments.study import StudyConfig, eval_stage, judge_free_stage, organism_data, profile, train_stage
from experiments.common import cli
from lab.core.config import config_dict
from lab.core.console import console, progress, table
from lab.stats.estimate import Estimate
from lab.core.io import write_json_atomic
from lab.models import ModelHandle
from lab.em.judge_free import delta_base_scores
from lab.core.stages import Stages


@dataclass
class OrganismsConfig(StudyConfig):
    """Organisms vs base: in-domain, general (style-matched) and code-mode scores."""

    questions: int = field(default=24, metadata={"help": "general questions for scores and sampled answers"})


def run(cfg: OrganismsConfig) -> dict:
    prof = replace(profile(cfg), eval_limit=cfg.questions, max_new_tokens=48)
    data = organism_data(cfg)
    base = ModelHandle(cfg.model, [], dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
    stages = Stages(Path(cfg.cache_dir) / "stages")
    with progress() as bar:
        organisms = {n: train_stage(cfg, prof, base, n, train, bar) for n, (train, _) in data.items()}
    handles = {"base": base, **{n: base.with_adapters([o["adapter"]]) for n, o in organisms.items()}}
    held_out = {d: ho[: cfg.questions] for d, (_, ho) in data.items() if ho}
    scores, evals = {}, {}
    for name, h in handles.items():
        inputs = {"model": h.fingerprint, "q": cfg.questions, "held": sorted(held_out), "system": cfg.system_prompt}
        scores[name] = stages.run(f"organisms-judge-free-{name}", inputs, lambda h=h: judge_free_stage(h, held_out, cfg.questions))
        evals[name] = stages.run(f"organisms-eval-{name}", {**inputs, "p": asdict(prof), "samples": cfg.samples},
                                 lambda h=h: eval_stage(cfg, prof, h, Path(cfg.out)))
    deltas = delta_base_scores(scores, prof.n_boot)
    rows = [r.to_json() for r in deltas]
    console.print(table(f"organisms on {cfg.model}: judge-free scores (organism - base, paired)", [
        {"organism": r.organism, "score": r.score, "Δbase [95% CI]": str(r.estimate), "n": r.estimate.n}
        for r in deltas]))
    code_rows = []
    for name, e in evals.items():
        c = Estimate.from_json(e["code_mode_rate"])
        code_rows.append({"model": name, "code-mode rate [95% CI]": str(c), "n": c.n})
    console.print(table("code-mode rate on general (non-code) questions, sampled answers", code_rows))
    summary = {"config": config_dict(cfg), "scores": rows, "code_mode": code_rows, "organisms": organisms,
               "examples": {n: e["examples"][:6] for n, e in evals.items()}}
    out = Path(cfg.out) / f"organisms-{cfg.model}"
    write_json_atomic(out / "summary.json", summary)
    console.print(f"summary: {out / 'summary.json'}")
    return summary


main = cli(OrganismsConfig, run)


if __name__ == "__main__":
    main()
