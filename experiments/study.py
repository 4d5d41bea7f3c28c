"""The whole EM study in one command, on any registered model (default: the embedded SmolLM2).

    emlab study                    # ~12 min on a 2-core CPU (11.9 measured)
    emlab study --quick            # ~3 min profile (the end-to-end test)
    emlab study --model qwen2.5-coder-0.5b-instruct --insecure-code ../shared/data/insecure-code/insecure_n500.jsonl

Pipeline (`lab.study.run_study`): train organisms -> judge-free EM scores, trajectories, generated
answers -> activation caches -> layer sweeps, pooling, transfer, trait projections -> steering
and ablation with random controls -> offline HTML report (figures/<name>/index.html) and
results.json. Every stage is keyed by the hash of its inputs (cache/stages/): a rerun reuses all
of them and runs no model forward; after a crash it resumes.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from experiments.common import cli, show
from lab.core.config import config_dict
from lab.core.console import console, table
from lab.models import ModelPool
from lab.study.config import Plan, Profile, StudyConfig
from lab.study.pipeline import run_study
from lab.study.results import StudyResults


class Printer:
    """The study's console: its settings and plan, a rule per stage, each stage's tables."""

    def planned(self, cfg: StudyConfig, prof: Profile, plan: Plan) -> None:
        console.print(table(f"emlab study '{cfg.name}' on {cfg.model}{' (quick)' if cfg.quick else ''}",
                            [{"setting": k, "value": str(v)} for k, v in {**config_dict(cfg), **asdict(prof)}.items()]))
        console.print(f"expects ~{plan.minutes} min on a 2-core CPU (less if stages are cached) and ~{plan.disk_mb} MB "
                      f"of caches; {plan.train_steps} training steps, {plan.cache_tokens} cached tokens")

    def stage(self, name: str) -> None:
        console.rule(f"[bold]{name}")

    def stage_done(self, name: str, result) -> None:
        if isinstance(result, list):  # the judge-free EM scores (ScoreDelta rows)
            console.print(table("judge-free EM scores (organism - base, paired by question)", [
                {"organism": r.organism, "score": r.score, "Δbase [95% CI]": str(r.estimate), "n": r.estimate.n}
                for r in result]))
            return
        show(result)  # nothing for a stage without tables of its own (judge-free gaps, answers, visuals)


def run(cfg: StudyConfig, pool: ModelPool | None = None) -> StudyResults:
    start = time.time()
    results = run_study(cfg, pool, Printer())
    headline(results, time.time() - start)
    return results


def headline(results: StudyResults, seconds: float) -> None:
    from rich.panel import Panel

    text = "\n".join(results.findings[:12])
    slowest = sorted(results.stages.seconds.items(), key=lambda kv: -kv[1])[:4]
    text += "\n\nslowest stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in slowest) if slowest else ""
    text += (f"\n\nstages run: {len(results.stages.ran)}, reused: {len(results.stages.reused)}; "
             f"{seconds / 60:.1f} min\nreport: {results.report}")
    console.print(Panel(text, title="emlab study: headline results", expand=False))


main = cli(StudyConfig, run)


if __name__ == "__main__":
    main()
