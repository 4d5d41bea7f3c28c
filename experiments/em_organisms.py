"""The papers' EM table at our sizes: organisms, checkpoints, validated judges, calibrated EM rates.

    emlab em-organisms --out runs/em-table --device cuda              # the full pipeline
    emlab em-organisms --out /tmp/em --train-limit 32 --checkpoints 2 --first-plot-questions 2 \\
        --first-plot-samples 2 --general-questions 2 --in-domain-questions 2 --max-new-tokens 8   # smoke

Stages, resumable, and the order of work: `lab.em.organisms`.
"""

from __future__ import annotations

import lab  # noqa: F401  (environment before torch)
from experiments.common import cli
from lab.core.console import console
from lab.em.organisms import EmTableConfig, run_em_organisms
from lab.reports.em_table import em_table_figures, em_table_report
from lab.reports.markdown import em_table_markdown

def run(cfg: EmTableConfig) -> dict:
    r = run_em_organisms(cfg, say=console.print)
    em_table_figures(r.answers, r.table, r.trained, r.out / "figures")
    if not cfg.judge_answers:  # sampled only: the answers wait for a judge validated on this model's samples
        console.print(f"{len(r.answers)} answers in {r.out / 'answers.jsonl'} (not judged: --no-judge-answers); judge them "
                      f"with a judge validated on this model's rated samples, e.g. emlab em-rates --source ratings --apply-to")
        return r.summary
    (r.out / "em_table.md").write_text(em_table_report(r.summary, em_table_markdown(r.table)))
    console.print(em_table_markdown(r.table))
    if r.summary["skipped"]:
        console.print(f"[yellow]skipped past the wall budget: {', '.join(r.summary['skipped'])}")
    return r.summary


main = cli(EmTableConfig, run)

if __name__ == "__main__":
    main()
