"""`emlab report diffing`: the model-diffing report section from the diffing verbs' summaries.

    emlab report diffing --summaries figures      # the folder emlab diff-adapter / identify-domains / ... wrote into

Reads the `summary.json` files of `emlab diff-adapter`, `identify-domains`, `train-steered` and
`checkpoints --measure shifts|adapters` under `--summaries` (`lab.reports.diffing`), and writes
`<summaries>/diffing.md` and an offline HTML page `<summaries>/report/index.html`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from experiments.common import cli
from lab.core.config import Config
from lab.core.console import console


@dataclass
class ReportDiffingConfig(Config):
    """The model-diffing report section (diffing.md + HTML) from the diffing verbs' summaries."""

    summaries: str = field(metadata={"help": "the folder holding the diffing verbs' summaries (their --out)"})


def run(cfg: ReportDiffingConfig) -> Path:
    from lab.core.errors import BadInput
    from lab.reports import write_report
    from lab.reports.diffing import diffing_section_from, markdown

    out = Path(cfg.summaries)
    if not out.is_dir():
        raise BadInput(f"--summaries {out}: not a folder")
    section = diffing_section_from(out)
    (out / "diffing.md").write_text(markdown(section), encoding="utf-8")
    index = write_report(out / "report", "emlab model diffing", [section], "Model diffing, monitoring and training dynamics.")
    console.print(f"wrote {out / 'diffing.md'} and {index}")
    return out / "diffing.md"


main = cli(ReportDiffingConfig, run)

if __name__ == "__main__":
    main()
