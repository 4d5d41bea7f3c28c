"""The whole EM study as one function: `run_study(cfg) -> StudyResults`.

Pipeline: train organisms (medical, financial; optional insecure code) on the train split ->
judge-free EM scores (in-domain held-out, general style-matched), trajectories, generated
answers (code-mode / refusal rates; judged EM with --judge-base-url) -> activation caches ->
layer sweeps, pooling, transfer, trait projections -> steering and ablation with random
controls -> offline HTML report (figures/<name>/index.html) and results.json.

Every stage is keyed by the hash of its inputs (cache/stages/): a rerun reuses all of them
and runs no model forward; after a crash it resumes; a changed setting recomputes only what
depends on it. The library prints no tables: a `StageObserver` (the `emlab study` verb) is told
of each stage and its typed result.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from lab.causal.ablation import AblationConfig, AblationResult, ablate_em
from lab.causal.steer import SteerConfig, SteerResult, run_steering
from lab.core.config import config_dict
from lab.core.console import progress
from lab.core.errors import BadInput
from lab.core.io import RESULTS_SCHEMA
from lab.core.stages import Stages
from lab.diffing.checkpoints import TrajectoryConfig, TrajectoryResult, trajectory
from lab.directions.pooling import PoolingConfig, PoolingResult, compare_poolings
from lab.directions.projection import ProjectionConfig, ProjectionResult, project_traits
from lab.directions.sweep import SweepConfig, SweepResult, direction_file, sweep_layers
from lab.directions.transfer import TransferConfig, TransferResult, transfer_directions
from lab.em.answers import EvalResult
from lab.em.judge_free import delta_base_scores
from lab.models import LabModel, ModelPool
from lab.study.config import Plan, Profile, StudyConfig, estimate, profile
from lab.study.results import ModelContrast, StageStats, StudyResults, Visuals
from lab.study.stages import (eval_stage, judge_free_stage, judge_summary, model_contrast_stage, organism_data, saved,
                              shared_base_scores, study_judge, train_stage, visual_stage)


class StageObserver(Protocol):
    """What a caller is told while the study runs (the verb prints it; the library prints nothing)."""

    def planned(self, cfg: StudyConfig, prof: Profile, plan: Plan) -> None: ...
    def stage(self, name: str) -> None: ...
    def stage_done(self, name: str, result: Any) -> None: ...


class _Silent:
    def planned(self, cfg, prof, plan) -> None:
        pass

    def stage(self, name) -> None:
        pass

    def stage_done(self, name, result) -> None:
        pass


def run_study(cfg: StudyConfig, pool: ModelPool | None = None, observer: StageObserver | None = None) -> StudyResults:
    """Run the study; every stage shares one copy of the base weights (`pool`, or a fresh one)."""
    with (pool or ModelPool()) as pool:
        return _run(cfg, pool, observer or _Silent())


def _run(cfg: StudyConfig, pool: ModelPool, observer: StageObserver) -> StudyResults:
    if cfg.diffing and not Path(cfg.diffing).is_dir():  # refused before any work, not after the whole study
        raise BadInput(f"--diffing {cfg.diffing}: no such folder")
    prof = profile(cfg)
    data = organism_data(cfg)
    base = LabModel(cfg.model, [], dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map, pool=pool)
    plan = estimate(cfg, prof, data, base)
    observer.planned(cfg, prof, plan)
    stages = Stages(Path(cfg.cache_dir) / "stages")
    out = Path(cfg.out) / cfg.name
    common = dict(cache_dir=cfg.cache_dir, out=str(out), device=cfg.device, dtype=str(base.dtype).split(".")[-1],
                  device_map=cfg.device_map, seed=cfg.seed, n_boot=prof.n_boot, limit=prof.contrast_limit,
                  model=cfg.model)

    organisms, train_seconds = {}, {}
    with progress() as bar:
        for name, (train, _) in data.items():
            start = time.perf_counter()
            organisms[name] = train_stage(cfg, prof, base, name, train, bar)
            train_seconds[name] = round(time.perf_counter() - start, 1)
    handles = {name: base.with_adapters([o.adapter]) for name, o in organisms.items()}
    held_out = {d: ho for d, (_, ho) in data.items() if ho}
    stage_loads, stage_peak_gb = {}, {}

    def staged(name, inputs, fn, outputs=None, codec=None):
        observer.stage(name)
        loads = pool.loads
        with _peak_memory() as peak:
            result = stages.run(name, {"study": cfg.name, "schema": RESULTS_SCHEMA, **inputs}, fn, outputs, codec)
        stage_loads[name], stage_peak_gb[name] = pool.loads - loads, peak
        observer.stage_done(name, result)
        return result

    out_of = lambda r: [r.out]  # noqa: E731  (a stage reruns if its output folder is gone)
    fps = {"base": base.fingerprint, **{n: h.fingerprint for n, h in handles.items()}}
    scores = {m: staged(f"judge-free-{m}", {"model": fps[m], "limit": prof.eval_limit, "held": sorted(held_out),
                                            "system": cfg.system_prompt},
                        lambda h=h: judge_free_stage(h, held_out, prof.eval_limit))
              for m, h in {"base": base, **handles}.items()}
    em_scores = delta_base_scores(scores, prof.n_boot)
    observer.stage_done("judge-free EM scores", em_scores)

    trajectories = {}
    for name, o in organisms.items():
        if name in held_out and (not cfg.quick or name == next(iter(organisms))):  # quick: the first only
            tcfg = TrajectoryConfig(run=o.run, domain=name, eval_limit=prof.repeat_limit, **common)
            shared = shared_base_scores(scores["base"], name, prof)
            trajectories[name] = staged(f"trajectory-{name}", {"cfg": config_dict(tcfg), "fp": fps[name]},
                                        lambda t=tcfg, b=shared: saved(trajectory(t, b)), out_of, TrajectoryResult)
    judge, judge_fp = study_judge(cfg, base)
    evals = {m: staged(f"eval-{m}", {"model": fps[m], "profile": asdict(prof), "samples": cfg.samples,
                                     "judge": [cfg.judge_base_url, cfg.judge_model, cfg.judge_scheme],
                                     "judges": [judge_fp, cfg.validation_set], "system": cfg.system_prompt},
                       lambda h=h: eval_stage(cfg, prof, h, judge), codec=EvalResult)
             for m, h in {"base": base, **handles}.items()}

    first = next(iter(handles))
    adapters_of = {n: o.adapter for n, o in organisms.items()}
    sweeps = {}
    for contrast, adapters in [("refusal", []), ("code_mode", []), ("general_answers", [adapters_of[first]])]:
        scfg = SweepConfig(contrast=contrast, adapters=adapters, **common)
        sweeps[contrast] = staged(f"sweep-{contrast}", {"cfg": config_dict(scfg), "fp": fps["base" if not adapters else first]},
                                  lambda s=scfg: saved(sweep_layers(s)), out_of, SweepResult)
    model_contrast = {n: staged(f"model-contrast-{n}", {"fps": [fps["base"], fps[n]], "p": asdict(prof)},
                                lambda n=n: model_contrast_stage(cfg, prof, base, handles[n], n), codec=ModelContrast)
                      for n in handles}
    pooling = None
    if "medical" in handles or "financial" in handles:
        dom = "medical" if "medical" in handles else "financial"
        pcfg = PoolingConfig(contrast=f"{dom}_answers", adapters=[adapters_of[dom]],
                             **{**common, "limit": prof.contrast_limit or 60})
        pooling = staged("pooling", {"cfg": config_dict(pcfg), "fp": fps[dom]}, lambda: saved(compare_poolings(pcfg)),
                         out_of, PoolingResult)
    org_args = [f"{n}={a}" for n, a in adapters_of.items()]
    transfer = {}
    for contrast in ("refusal",) if cfg.quick else ("refusal", "general_answers"):
        tcfg = TransferConfig(contrast=contrast, organisms=org_args, **common)
        transfer[contrast] = staged(f"transfer-{contrast}", {"cfg": config_dict(tcfg), "fps": fps},
                                    lambda t=tcfg: saved(transfer_directions(t)), out_of, TransferResult)
    projections = {}
    for n, a in adapters_of.items():
        pc = ProjectionConfig(organism=a, **{**common, "out": str(out / f"projection-{n}")})
        projections[n] = staged(f"projection-{n}", {"cfg": config_dict(pc), "fps": fps},
                                lambda p=pc: saved(project_traits(p)), out_of, ProjectionResult)
    neutral = 8 if cfg.quick else 16
    rcfg = SteerConfig(target="refusal", ratios=list(prof.steer_ratios), random_controls=prof.random_controls,
                       eval_limit=prof.steer_prompts, max_new_tokens=min(prof.max_new_tokens, 24), layer_window=0,
                       neutral=neutral, **common)
    steer_refusal = staged("steer-refusal", {"cfg": config_dict(rcfg), "fp": fps["base"]},
                           lambda: saved(run_steering(rcfg)), out_of, SteerResult)
    ecfg = SteerConfig(target="em", organism=adapters_of[first], ratios=list(prof.steer_ratios),
                       random_controls=prof.random_controls, eval_limit=prof.repeat_limit, layer_window=0,
                       neutral=neutral, judge_base_url=cfg.judge_base_url, judge_model=cfg.judge_model, **common)
    steer_em = None
    if not cfg.quick:  # the addition experiment is the default profile's (quick keeps under 3 minutes)
        steer_em = staged("steer-em", {"cfg": config_dict(ecfg), "fps": fps}, lambda: saved(run_steering(ecfg)),
                          out_of, SteerResult)
    acfg = AblationConfig(organisms=org_args, random_controls=prof.random_controls, eval_limit=prof.repeat_limit,
                          score=[first] if cfg.quick else [], **common)
    ablation = staged("ablation", {"cfg": config_dict(acfg), "fps": fps}, lambda: saved(ablate_em(acfg)), out_of,
                      AblationResult)
    direction = str(direction_file(sweeps["general_answers"], "mean_diff"))
    visuals = staged("visuals", {"fps": [fps["base"], fps[first]], "dir": direction},
                     lambda: visual_stage(cfg, base, handles[first], direction, out / "visuals"),
                     lambda r: list(r.files.values()), Visuals)
    results = StudyResults(
        cfg, prof, plan, train_seconds, organisms, stage_loads, stage_peak_gb, em_scores, trajectories,
        judge_summary(judge), evals, sweeps, model_contrast, pooling, transfer, projections, steer_refusal, steer_em,
        ablation, visuals, StageStats(stages.ran, stages.reused, stages.seconds), pool.loads, [], "")
    return _reported(results, out)


def _reported(results: StudyResults, out: Path) -> StudyResults:
    """The results with their findings and report; the report and results.json written under `out`."""
    from dataclasses import replace

    from lab.reports.study import findings, write_study_report

    results = replace(results, findings=findings(results))
    extra = []
    if results.config.diffing:
        from lab.reports.diffing import diffing_section_from

        extra.append(diffing_section_from(results.config.diffing))
    results = replace(results, report=str(write_study_report(results, out, extra=extra)))
    results.write(out / "results.json")
    return results


@contextlib.contextmanager
def _peak_memory():
    """Peak GPU memory (GB) per device during the block, filled in on exit ({} on CPU)."""
    import torch

    peak: dict = {}
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for d in range(n):
        torch.cuda.reset_peak_memory_stats(d)
    try:
        yield peak
    finally:
        peak.update({f"cuda:{d}": round(torch.cuda.max_memory_allocated(d) / 2**30, 2) for d in range(n)})
