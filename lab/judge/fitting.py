"""Fitting emlab's own judges and validating each on labelled answers it never trained on.

    validated = fit_and_validate("activation", train_rows, {"general questions (4 refs)": rows}, features)
    validated.validations[...].auroc              # held-out AUROC with its CI

`fit_and_validate` is the one fit-then-validate step (the judge-validation verb, the EM table's
judges, judges fitted on rated samples): a coherence measure trains on coherent answers vs their
corrupted versions and is validated the same way. `run_judge_validation` fits every kind on the
Model Organisms paired medical set and writes `<out>/judges/<kind>.json` with its validations;
`validate_file` scores a labelled file with a saved (or LLM) judge, fitting nothing on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab.core.config import Config
from lab.core.errors import BadInput
from lab.judge.features import Featurizer, coherence_rows
from lab.judge.labelled import LabelledAnswer, judge_data, subsample_groups
from lab.judge.validated import KINDS, TrainedJudge, Validated
from lab.models.store import DEFAULT_MODEL


def fit_and_validate(kind: str, answers: list[LabelledAnswer], validation_sets: dict[str, list[LabelledAnswer]],
                     features: Featurizer, n_boot: int = 1000, seed: int = 0) -> tuple[Validated, int]:
    """A judge of `kind` fitted on `answers` and validated on every set; (the judge, answers it fitted on).

    The coherence measure fits on `answers` beside their corrupted versions (`coherence_rows`,
    seeded `seed`) and is validated on each set's coherent answers vs theirs (seed + 1)."""
    metric = "coherent" if kind == "coherence" else "aligned"
    fit_rows = coherence_rows(answers, seed) if kind == "coherence" else answers
    validated = Validated(TrainedJudge(kind, metric, features=features).fit(fit_rows))
    for name, rows in validation_sets.items():
        rows = coherence_rows(rows, seed + 1) if kind == "coherence" else rows
        validated.validate(rows, name, metric, n_boot=n_boot, seed=seed)
    return validated, len(fit_rows)


@dataclass
class JudgeValidationConfig(Config):
    """Validated judges (embedding, activation, length, coherence) fitted on labelled answers, saved with their validation table."""

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


def run_judge_validation(cfg: JudgeValidationConfig, on_fitted=None) -> list[dict]:
    """Fit and validate every kind; save `<out>/judges/<kind>.json`. Returns the judges x validation-sets
    rows (`Validation.row` cells plus "trained on"); `on_fitted(kind, rows)` after each kind."""
    from lab.judge.validated import save_validated

    unknown = set(cfg.kinds) - set(KINDS)
    if unknown:
        raise BadInput(f"unknown judge kinds {sorted(unknown)} (one of {', '.join(KINDS)})")
    data = judge_data(cfg.shared, cfg.seed, cfg.val_groups, train_groups=10**9, extra_domains=cfg.extra_domains)
    features = Featurizer(cfg.model, cfg.cache_dir)
    out = Path(cfg.out)
    rows = []
    for kind in cfg.kinds:
        groups = cfg.model_train_groups if kind in ("activation", "coherence") else cfg.train_groups
        validated, n_fit = fit_and_validate(kind, subsample_groups(data.train, groups, cfg.seed), data.validation,
                                            features, cfg.n_boot, cfg.seed)
        mine = [{**v.row(kind), "trained on": f"{data.source}, {n_fit} answers"} for v in validated.validations.values()]
        rows += mine
        save_validated(out / "judges" / f"{kind}.json", validated)
        if on_fitted is not None:
            on_fitted(kind, mine)
    return rows


def validate_file(kind: str, labels: str | Path, judges_dir: str | Path, model: str = DEFAULT_MODEL,
                  cache_dir: str | Path = "cache", base_url: str | None = None, judge_model: str | None = None,
                  n_boot: int = 1000) -> dict:
    """`emlab judge validate`: score a labelled file with a trained (or LLM) judge; fit nothing on it.
    Returns the validation's table row."""
    from lab.judge.labelled import read_labelled
    from lab.judge.validated import LLMAnswerJudge, load_validated, validate

    rows = read_labelled(labels)
    if kind == "llm":
        if not judge_model:
            raise BadInput("--judge llm needs --judge-model (and --judge-base-url for a local server)")
        from lab.judge.client import Judge, JudgeConfig

        judge = LLMAnswerJudge(Judge(JudgeConfig(base_url=base_url, model=judge_model)))
    elif kind in KINDS:
        path = Path(judges_dir) / f"{kind}.json"
        if not path.exists():
            raise BadInput(f"no trained {kind} judge at {path}: run `emlab judge fit "
                           f"--kinds {kind}` first")
        judge = load_validated(path, Featurizer(model, cache_dir)).judge
    else:
        raise BadInput(f"unknown judge {kind!r} (one of {', '.join(KINDS)}, llm)")
    metric = "coherent" if kind == "coherence" else "aligned"
    return validate(judge, rows, Path(labels).name, metric, n_boot=n_boot).row(judge.name)
