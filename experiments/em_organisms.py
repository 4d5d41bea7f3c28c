"""The papers' EM table at our sizes: organisms, checkpoints, validated judges, calibrated EM rates.

    emlab em-organisms --out runs/em-table --device cuda              # the full pipeline
    emlab em-organisms --out /tmp/em --limit 32 --checkpoints 2 --first-plot-questions 2 \\
        --first-plot-samples 2 --general-questions 2 --in-domain-questions 2 --max-new-tokens 8   # smoke

Stages (each a content-keyed JSON under <out>/stages/, so a rerun resumes where it stopped):
1. judges: the activation judge (alignment) and the coherence measure are fitted and
   validated (`lab.judge`); with `--extra-domains` the alignment judge also fits on half of
   the shipped medical and financial counterparts (their other halves validate), aiming at
   the general questions, where the medical-only judge failed (AUROC 0.71). Saved under
   <out>/judges/ with their validations.
2. organisms: each `--organisms domain:recipe` trains (`lab.training.lora.train_lora`, resumable)
   on the papers' data with `--checkpoints` checkpoints; its final adapter is copied to
   <out>/organisms/<domain>-<recipe>/final/.
3. answers: the base model and every checkpoint answer the EM paper's first-plot questions,
   the shipped general questions and held-out user turns of each training domain (T=1,
   seeded); every answer is judged and written as `lab.em.answers.JudgedAnswer` rows.
4. table: `lab.em.table.em_table` (raw and calibrated EM, coherence, code-mode, the judge's
   validation gate), figures, <out>/answers.jsonl.

Order of work: judges, base model, then each organism trained with its final checkpoint
answered, then the intermediate checkpoints. Past `--wall-budget-s` no new stage starts
(the table says what was skipped), so a short budget loses the trajectory first.
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
    if cfg.judges == "none":  # sampled only: the answers wait for a judge validated on this model's samples
        console.print(f"{len(r.answers)} answers in {r.out / 'answers.jsonl'} (not judged: --judges none); judge them "
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
