"""EM across training: judge-free scores at every checkpoint of an organism (base model = step 0).

    python -m experiments.em_trajectory --run runs/medical --domain medical

Per checkpoint, paired against the base model with bootstrap CIs: the in-domain gap on the
held-out advice questions (harmful - aligned answer log-prob), and the general style-matched
gaps (usual and terse styles) on questions outside the training domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from experiments.common import cli
from lab.core.io import out_folder, write_summary
from lab.directions.options import AnalysisOptions
from lab.core.console import console, progress, table
from lab.data.formats import advice_split
from lab.core.errors import BadInput
from lab.em.judge_free import in_domain_gaps, style_gaps_under
from lab.core.io import write_rows
from lab.reports.plots import lines_with_ci
from lab.stats.estimate import format_ci, mean_ci
from lab.training.lora import adapter_meta


@dataclass
class TrajectoryConfig(AnalysisOptions):
    """Judge-free EM scores across an organism's checkpoints."""

    run: str = field(default="", metadata={"help": "training folder holding checkpoints/step-*"})
    domain: str = field(default="medical", metadata={"help": "training domain (held-out in-domain questions)"})
    eval_limit: int = field(default=0, metadata={"help": "questions per score (0: all)"})


def checkpoints(run: Path) -> list[Path]:
    found = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "adapter_model.safetensors").exists())
    if not found:
        raise BadInput(f"{run} has no checkpoints/step-* adapter folders")
    return found


def base_scores(model, domain: str, limit: int | None, seed: int = 0) -> dict:
    """The base model's judge-free scores that every checkpoint is paired against (step 0)."""
    _, held_out = advice_split(domain, seed=seed)
    gen = style_gaps_under(model, (), limit)
    return {"in-domain": in_domain_gaps(model, held_out[:limit]), "usual": gen["usual"], "terse": gen["terse"]}


def trajectory(cfg: TrajectoryConfig, run: Path, domain: str, on_step=None, base: dict | None = None) -> list[dict]:
    """Rows of (step, score, Δbase with CI). `base`: precomputed `base_scores` (the study shares them)."""
    _, held_out = advice_split(domain, seed=cfg.seed)
    held_out = held_out[: cfg.eval_limit or None]
    base = base or base_scores(cfg.view([]), domain, cfg.eval_limit or None, cfg.seed)
    if len(base["in-domain"]) != len(held_out) or len(base["usual"]) != len(style_gaps_ids(cfg.eval_limit)):
        raise BadInput("base scores do not match the trajectory's questions")
    rows = []
    for ckpt in [None, *checkpoints(run)]:
        if ckpt is None:  # step 0 is the base model itself: Δbase is 0 by definition
            step, scores = 0, {"in-domain": base["in-domain"] * 0, "general (usual)": base["usual"] * 0,
                               "general (terse)": base["terse"] * 0}
        else:
            model = cfg.view([str(ckpt)])
            step = adapter_meta(ckpt).get("step", int(ckpt.name.split("-")[-1]))
            gen = style_gaps_under(model, (), cfg.eval_limit or None)
            scores = {"in-domain": in_domain_gaps(model, held_out) - base["in-domain"],
                      **{f"general ({s})": gen[s] - base[s] for s in ("usual", "terse")}}
        for name, values in scores.items():
            r = mean_ci(values, cfg.n_boot, cfg.seed)
            rows.append({"step": step, "score": name, "value": r.value, "value_lo": r.lo, "value_hi": r.hi, "n": r.n})
        if on_step:
            on_step()
    return rows


def style_gaps_ids(limit: int) -> list[str]:
    from lab.data.formats import load_general_questions

    return [q["id"] for q in load_general_questions()[: limit or None]]


def run(cfg: TrajectoryConfig, base: dict | None = None) -> dict:
    if not cfg.run:
        raise BadInput("--run TRAINING_FOLDER is required")
    cfg.refuse_adapters("--model (step 0) and the checkpoints under --run")
    run_dir = Path(cfg.run)
    with progress() as bar:
        task = bar.add_task("checkpoints", total=len(checkpoints(run_dir)) + 1, info="")
        rows = trajectory(cfg, run_dir, cfg.domain, lambda: bar.advance(task), base)
    out = out_folder(cfg.out, f"em_trajectory/{run_dir.name}")
    write_rows(rows, out / "rows")
    lines_with_ci(rows, "score", "step", "value", out / "trajectory.png",
                  f"{run_dir.name}: EM scores across training (Δbase)", "Δ log-prob (misaligned - aligned)", hline=0.0)
    console.print(table(f"EM trajectory: {run_dir.name}",
                        [{"step": r["step"], "score": r["score"],
                          "Δbase [95% CI]": format_ci(r["value"], r["value_lo"], r["value_hi"])} for r in rows]))
    return write_summary(out, cfg, rows=rows)


main = cli(TrajectoryConfig, run)


if __name__ == "__main__":
    main()
