"""`emlab report study`: the study report re-rendered from its `results.json`, with no model.

    emlab report study --results figures/default/results.json                # rewrites figures/default/index.html
    emlab report study --results figures/default/results.json --out /tmp/re  # somewhere else

The typed results are read back (`lab.study.results.StudyResults.read`) and rendered as
`emlab study` renders them (`lab.reports.study.write_study_report`), with the model-diffing
section when the study had one. Figures the report links are those of the original run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from experiments.common import cli
from lab.core.config import Config
from lab.core.console import console


@dataclass
class ReportStudyConfig(Config):
    """The study report re-rendered from a results.json (no model)."""

    results: str = field(metadata={"help": "a results.json written by emlab study"})
    out: str = field(default="", metadata={"help": "report folder (default: the results.json's folder)"})


def run(cfg: ReportStudyConfig) -> Path:
    from lab.reports.study import write_study_report
    from lab.study.results import StudyResults

    results = StudyResults.read(cfg.results)
    extra = []
    if results.config.diffing:
        from lab.reports.diffing import diffing_section_from

        extra.append(diffing_section_from(results.config.diffing))
    path = write_study_report(results, Path(cfg.out or Path(cfg.results).parent), extra=extra)
    console.print(f"[green]report[/] {path}")
    return path


main = cli(ReportStudyConfig, run)

if __name__ == "__main__":
    main()
