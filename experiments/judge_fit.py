"""Fit emlab's own judges and validate each on labelled answers it never trained on.

    emlab judge fit                        # embedding, length, activation, coherence
    emlab judge fit --kinds embedding length --train-groups 300

Training set: the Model Organisms paired medical set (bad vs good answers to the same user
turns), split by user turn; judges fit on a subsample of the training side. Validation
sets: the held-out side (in-domain), the shipped medical and financial harmful/aligned
counterparts (other writers; financial is another domain), and the shipped general
questions' four references (across domains: the questions EM is measured on). Without
../shared, judges fit on the shipped medical counterparts instead (`lab.judge.fitting`).

Writes `<out>/judges/<kind>.json` (numbers only, with their validations; what
`emlab judge validate` loads) and `<out>/judge_validation.md` / `.json`: the judges x
validation-sets table (AUROC, sensitivity, specificity at the EM threshold, bootstrap CIs).
"""

from __future__ import annotations

from pathlib import Path

from experiments.common import cli
from lab.core.console import console, table
from lab.core.io import write_json_atomic
from lab.judge.fitting import JudgeValidationConfig, run_judge_validation
from lab.reports.markdown import markdown_table

COLUMNS = ["judge", "validation set", "n (mis/ali)", "AUROC", "sensitivity", "specificity", "usable"]


def run(cfg: JudgeValidationConfig) -> list[dict]:
    rows = run_judge_validation(cfg, on_fitted=lambda kind, mine: console.print(table(kind, mine)))
    out = Path(cfg.out)
    write_json_atomic(out / "judge_validation.json", {"config": vars(cfg), "rows": rows})
    (out / "judge_validation.md").write_text("\n".join(markdown_table(rows, COLUMNS)) + "\n")
    console.print(table("judges x validation sets", rows, COLUMNS))
    return rows


main = cli(JudgeValidationConfig, run)

if __name__ == "__main__":
    main()
