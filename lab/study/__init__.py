"""The study: the whole EM study as one call, and its typed results.

    from lab.study import StudyConfig, run_study

    results = run_study(StudyConfig(quick=True))      # StudyResults: every stage's typed result
    results.findings, results.report                  # plain sentences; figures/<name>/index.html

Modules: `config` (`StudyConfig`, `Profile`, `Plan`), `stages` (the study's own stages),
`pipeline` (`run_study`, `StageObserver`), `results` (`StudyResults`, schema 2 `results.json`).
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "config": "StudyConfig Profile Plan profile estimate",
    "pipeline": "run_study StageObserver",
    "results": "StudyResults TrainedOrganism ModelContrast JudgeSummary Visuals StageStats",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
