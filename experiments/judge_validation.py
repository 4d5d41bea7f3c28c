"""Fit emlab's own judges and validate each on labelled answers it never trained on.

    python -m experiments.judge_validation                        # embedding, length, activation, coherence
    python -m experiments.judge_validation --kinds embedding length --train-groups 300

Training set: the Model Organisms paired medical set (bad vs good answers to the same user
turns), split by user turn; judges fit on a subsample of the training side. Validation
sets: the held-out side (in-domain), the shipped medical and financial harmful/aligned
counterparts (other writers; financial is another domain), and the shipped general
questions' four references (across domains: the questions EM is measured on). Without
../shared, judges fit on the shipped medical counterparts instead.

Writes `<out>/judges/<kind>.json` (numbers only, with their validations; what
`emlab judge validate` loads) and `<out>/judge_validation.md` / `.json`: the judges x
validation-sets table (AUROC, sensitivity, specificity at the EM threshold, bootstrap CIs).
The coherence measure is validated the same way on coherent answers vs their corrupted
(shuffled / truncated / repetitive) versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lab  # noqa: F401  (environment before torch)
from experiments.common import cli
from lab.core.console import console, table
from lab.core.errors import BadInput
from lab.core.io import write_json_atomic
from lab.judge.features import Featurizer, coherence_rows
from lab.judge.labelled import LabelledAnswer, judge_data, subsample_groups
from lab.judge.validated import KINDS, TrainedJudge, Validated, save_validated
from lab.models import DEFAULT_MODEL


@dataclass
class JudgeValidationConfig:
    kinds: list[str] = field(default_factory=lambda: ["length", "embedding", "activation", "coherence"],
                             metadata={"help": f"judges to fit: {', '.join(KINDS)}"})
    shared: str = field(default="../shared", metadata={"help": "folder holding data/model-organisms"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "base model (activation judge, coherence)"})
    train_groups: int = field(default=400, metadata={"help": "user turns to fit on (2 answers each)"})
    model_train_groups: int = field(default=150, metadata={"help": "user turns for judges that run the model"})
    val_groups: int = field(default=120, metadata={"help": "groups per validation set (subsample)"})
    extra_domains: bool = field(default=False, metadata={
        "help": "also fit on half of the shipped medical and financial counterparts (the other half validates)"})
    out: str = field(default="cache/judge-validation", metadata={"help": "output folder"})
    cache_dir: str = field(default="cache", metadata={"help": "activation cache folder"})
    n_boot: int = 1000
    seed: int = 0


def datasets(cfg: JudgeValidationConfig) -> tuple[str, list[LabelledAnswer], dict[str, list[LabelledAnswer]]]:
    """(training source, training rows, validation sets by name); see `lab.judge.labelled.judge_data`."""
    data = judge_data(cfg.shared, cfg.seed, cfg.val_groups, train_groups=10**9, extra_domains=cfg.extra_domains)
    return data.source, data.train, data.validation


def run(cfg: JudgeValidationConfig) -> list[dict]:
    unknown = set(cfg.kinds) - set(KINDS)
    if unknown:
        raise BadInput(f"unknown judge kinds {sorted(unknown)} (one of {', '.join(KINDS)})")
    source, train, sets = datasets(cfg)
    features = Featurizer(cfg.model, cfg.cache_dir)
    out = Path(cfg.out)
    rows = []
    for kind in cfg.kinds:
        groups = cfg.model_train_groups if kind in ("activation", "coherence") else cfg.train_groups
        fit_rows = subsample_groups(train, groups, cfg.seed)
        metric = "coherent" if kind == "coherence" else "aligned"
        if kind == "coherence":
            fit_rows = coherence_rows(fit_rows, cfg.seed)
        console.print(f"fitting {kind} on {len(fit_rows)} answers from {source}")
        judge = TrainedJudge(kind, metric, features=features).fit(fit_rows)
        validated = Validated(judge)
        for name, val in sets.items():
            val = coherence_rows(val, cfg.seed + 1) if kind == "coherence" else val
            v = validated.validate(val, name, metric, n_boot=cfg.n_boot, seed=cfg.seed)
            rows.append({**v.row(kind), "trained on": f"{source}, {len(fit_rows)} answers"})
            console.print(table(f"{kind}", [rows[-1]]))
        save_validated(out / "judges" / f"{kind}.json", validated)
    write_json_atomic(out / "judge_validation.json", {"config": vars(cfg), "rows": rows})
    cols = ["judge", "validation set", "n (mis/ali)", "AUROC", "sensitivity", "specificity", "usable"]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (out / "judge_validation.md").write_text("\n".join(md) + "\n")
    console.print(table("judges x validation sets", rows, cols))
    return rows


def validate_file(kind: str, labels: str | Path, judges_dir: str | Path, model: str = DEFAULT_MODEL,
                  cache_dir: str | Path = "cache", base_url: str | None = None, judge_model: str | None = None,
                  n_boot: int = 1000) -> dict:
    """`emlab judge validate`: score a labelled file with a trained (or LLM) judge; fit nothing on it."""
    from lab.judge.labelled import read_labelled
    from lab.judge.validated import LLMAnswerJudge, load_validated, validate

    rows = read_labelled(labels)
    if kind == "llm":
        if not judge_model:
            raise BadInput("--judge llm needs --judge-model (and --base-url for a local server)")
        from lab.judge.client import Judge, JudgeConfig

        judge = LLMAnswerJudge(Judge(JudgeConfig(base_url=base_url, model=judge_model)))
    elif kind in KINDS:
        path = Path(judges_dir) / f"{kind}.json"
        if not path.exists():
            raise BadInput(f"no trained {kind} judge at {path}: run `python -m experiments.judge_validation "
                           f"--kinds {kind}` first")
        judge = load_validated(path, Featurizer(model, cache_dir)).judge
    else:
        raise BadInput(f"unknown judge {kind!r} (one of {', '.join(KINDS)}, llm)")
    metric = "coherent" if kind == "coherence" else "aligned"
    row = validate(judge, rows, Path(labels).name, metric, n_boot=n_boot).row(judge.name)
    console.print(table(f"judge {judge.name} on {labels}", [row]))
    return row


main = cli(JudgeValidationConfig, run)

if __name__ == "__main__":
    main()
