"""The study's results, typed: what `run_study` returns, `results.json` holds and the report reads.

    results = StudyResults.read("figures/default/results.json")
    results.sweeps["refusal"].best[0].auroc          # Estimate
    results.steer_refusal.rows                        # SteerRow per cell, each beside its random controls

`results.json` is `{"schema": 2, ...}` (`lab.core.io.write_result`); every CI is an `Estimate`
(`{"value", "lo", "hi", "n"}`) and no key is a display string: display happens in
`lab.reports.tables` and `lab.reports.study`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.causal.ablation import AblationResult
from lab.causal.steer import SteerResult
from lab.core.io import read_result, write_result
from lab.core.records import Record
from lab.diffing.checkpoints import TrajectoryResult
from lab.directions.pooling import PoolingResult
from lab.directions.projection import ProjectionResult
from lab.directions.sweep import BestLayer, LayerScore, RandomBaseline, SweepResult
from lab.directions.transfer import TransferResult
from lab.em.answers import EvalResult
from lab.em.judge_free import ScoreDelta
from lab.judge.validated import Validation
from lab.study.config import Plan, Profile, StudyConfig


@dataclass(frozen=True)
class TrainedOrganism(Record):
    name: str
    run: str  # the training folder (checkpoints/step-*)
    adapter: str  # the final adapter folder
    losses: list[float]


@dataclass(frozen=True)
class ModelContrast(Record):
    """Base vs organism on the same general prompts (last token), held out by prompt: every
    (method, layer), each method's best layer and the random baseline."""

    methods: list[str]
    scores: list[LayerScore]
    best: list[BestLayer]
    random: RandomBaseline | None


@dataclass(frozen=True)
class JudgeSummary(Record):
    """The offline judge the study's calibrated EM rates use, and its validation on the matching set
    (`validation` None: no judge validated there; `validation_set` None: `--judges-dir none`)."""

    judge: str
    validation_set: str | None
    note: str
    validation: Validation | None = None


@dataclass(frozen=True)
class Visuals(Record):
    """The circuitsvis pages (attention, per-token projections; base and organism) at `layer`."""

    layer: int
    files: dict[str, str]


@dataclass(frozen=True)
class StageStats(Record):
    ran: list[str]
    reused: list[str]
    seconds: dict[str, float]


@dataclass(frozen=True)
class StudyResults(Record):
    config: StudyConfig
    profile: Profile
    plan: Plan
    train_seconds: dict[str, float]
    organisms: dict[str, TrainedOrganism]
    stage_loads: dict[str, int]
    stage_peak_gb: dict[str, dict[str, float]]
    em_scores: list[ScoreDelta]
    trajectories: dict[str, TrajectoryResult]
    judge: JudgeSummary
    evals: dict[str, EvalResult]
    sweeps: dict[str, SweepResult]
    model_contrast: dict[str, ModelContrast]
    pooling: PoolingResult | None
    transfer: dict[str, TransferResult]
    projections: dict[str, ProjectionResult]
    steer_refusal: SteerResult
    steer_em: SteerResult | None
    ablation: AblationResult
    visuals: Visuals
    stages: StageStats
    model_loads: int
    findings: list[str]
    report: str

    def write(self, path: str | Path) -> Path:
        """`results.json`: `{"schema": 2, ...}`."""
        return write_result(self, Path(path))

    @classmethod
    def read(cls, path: str | Path) -> "StudyResults":
        """A `results.json` written by `write` (one `BadInput` line for an older schema)."""
        return read_result(cls, Path(path))
