"""EM rates of answers already sampled, judged now by any judge: an OpenAI-compatible LLM judge or
emlab's saved validated judges (`emlab em-rates --source answers`).

    emlab em-rates --source answers --answers runs/em-table/answers.jsonl --judge-base-url http://127.0.0.1:8765/v1
    emlab em-rates --source answers --answers runs/em-table/answers.jsonl --judge validated

Both answers files emlab writes are read as they are: the EM pipeline's (`JudgedAnswer` rows, also
`.jsonl.gz`), grouped by (organism, checkpoint step, question set), and `em-rates --source
sample`'s, one group named by the file's folder (its model and config hash). Nothing is sampled.

- `--judge llm`: the judge scores each answer's alignment and coherence (0-100, emlab's prompts),
  and each papers' criterion (`lab.judge.criteria.EM_CRITERIA`) gives an EM rate with a bootstrap
  CI (`em_rate`), with the answers it did not count.
- `--judge validated`: the saved judge with the best validation AUROC on `--validation-set`
  (`best_validated_judge`) gives the Rogan-Gladen calibrated rate (`calibrated_em`), or the note
  that says why there is none (no saved judge, a judge below the AUROC bar or at chance).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from lab.core.config import DEFAULT_CACHE_DIR, DEFAULT_OUT, Config
from lab.core.errors import BadInput
from lab.judge.client import DEFAULT_JUDGE_MODEL, JudgeScheme
from lab.judge.labelled import GENERAL
from lab.models import DEFAULT_MODEL
from lab.stats.estimate import Estimate

Say = Callable[[str], None]


@dataclass
class AnswerRatesConfig(Config):
    """EM rates with 95% CIs of an answers file already sampled, judged now by an LLM judge or by saved validated judges."""

    answers: str = field(default="", metadata={"help": "answers file: em-organisms' or em-rates' answers.jsonl(.gz)"})
    judge: Literal["llm", "validated"] = field(default="llm", metadata={
        "help": "llm: the OpenAI-compatible judge at --judge-base-url; validated: the best saved validated judge "
                "in --judges-dir (calibrated rates)"})
    judge_base_url: str = field(default="", metadata={"help": "OpenAI-compatible judge endpoint (--judge llm)"})
    judge_model: str = field(default=DEFAULT_JUDGE_MODEL, metadata={"help": "judge model name"})
    judge_scheme: JudgeScheme = field(default="auto", metadata={"help": "judge scoring scheme (auto: by model)"})
    judges_dir: str = field(default="cache/judge-validation/judges", metadata={
        "help": "saved validated judges (--judge validated; `emlab judge fit` writes <out>/judges)"})
    validation_set: str = field(default=GENERAL, metadata={
        "help": "the judges' validation set matching these answers' questions (its sensitivity/specificity "
                "calibrate)"})
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "the base model the activation and coherence judges read (--judge validated)"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "activation cache folder"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "output folder"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})


@dataclass(frozen=True)
class AnswerRate:
    """One group's EM rate under one criterion (`calibrated`: the validated judge's), or why there is none."""

    organism: str  # who answered: an organism, "base", or the answers file's folder
    step: int  # checkpoint step (0: the base model, or not recorded)
    set: str  # question set ("answers" where the file records none)
    n: int  # answers in the group
    judge: str
    criterion: str
    rate: Estimate | None
    note: str = ""


@dataclass
class AnswerRatesRun:
    rows: list[AnswerRate]
    out: Path


def read_answers(path: str | Path) -> list[dict]:
    """The answer rows of either answers file emlab writes, each with `group` = (organism, step, set),
    a unique `id`, `question_id`, `question` and `answer`; a bad line is one `file:line` error."""
    from lab.em.answers import read_judged

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such answers file" if not path.is_dir() else f"{path}: a directory, not an "
                       f"answers file")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    first = next((line for line in raw.decode("utf-8", errors="replace").split("\n") if line.strip()), "")
    if not first:
        raise BadInput(f"{path}: no answers in it")
    if '"step"' in first and '"domain"' in first:  # the EM pipeline's rows
        return [{"group": (r.organism, r.step, r.set), "id": f"{r.organism}/{r.id}", "question_id": r.question_id,
                 "question": r.question, "answer": r.answer} for r in read_judged(path)]
    rows = []
    for n, line in enumerate(raw.decode("utf-8").split("\n"), 1):  # em-rates --source sample's rows
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not {"question", "answer"} <= set(obj):
                raise ValueError
        except ValueError:
            raise BadInput(f"{path}:{n}: not an answer row (needs question and answer)") from None
        qid = str(obj.get("question_id", obj.get("id", n)))
        rows.append({"group": (path.parent.name, 0, "answers"), "id": f"{obj.get('id', n)}#{obj.get('sample', 0)}",
                     "question_id": qid, "question": obj["question"], "answer": obj["answer"]})
    return rows


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0] != "base", kv[0])))


def llm_rates(cfg: AnswerRatesConfig, rows: list[dict]) -> list[AnswerRate]:
    """Every answer judged by the LLM judge; an EM rate per group and criterion."""
    from lab.judge.client import judge_answers, llm_judge
    from lab.judge.criteria import EM_CRITERIA
    from lab.em.rates import em_rate

    judge = llm_judge(cfg.judge_base_url, cfg.judge_model, cfg.judge_scheme)
    if judge is None:
        raise BadInput("--judge llm needs --judge-base-url (an OpenAI-compatible endpoint)")
    judged = judge_answers([{k: v for k, v in r.items() if k != "group"} for r in rows], judge)
    for r, j in zip(rows, judged):
        r.update(aligned=j["aligned"], coherent=j["coherent"])
    out = []
    for (organism, step, qset), group in _groups(rows).items():
        for criterion in EM_CRITERIA:
            em = em_rate(group, criterion, cfg.n_boot, cfg.seed)
            note = f"{em.n_uncounted} not counted, {em.n_unscored} unscored" if em.n_uncounted or em.n_unscored else ""
            out.append(AnswerRate(organism, step, qset, len(group), judge.config.model, criterion, em.estimate, note))
    return out


def validated_rates(cfg: AnswerRatesConfig, rows: list[dict]) -> list[AnswerRate]:
    """The best saved validated judge's calibrated rate per group (or its note)."""
    from lab.em.rates import calibrated_em
    from lab.judge.choice import best_validated_judge
    from lab.models import LabModel

    choice = best_validated_judge(cfg.judges_dir, cfg.validation_set, LabModel(cfg.model), cfg.cache_dir)
    out = []
    for (organism, step, qset), group in _groups(rows).items():
        c = calibrated_em(choice, [(r["question"], r["answer"]) for r in group], cfg.n_boot, cfg.seed)
        out.append(AnswerRate(organism, step, qset, len(group), c.judge, "calibrated", c.corrected, c.note))
    return out


def measure_answer_rates(cfg: AnswerRatesConfig, say: Say = print) -> AnswerRatesRun:
    """Read the answers (bad input fails before any judge is called), judge them, one rate per group."""
    if not cfg.answers:
        raise BadInput("--answers FILE is required (an answers.jsonl of em-organisms or em-rates)")
    rows = read_answers(cfg.answers)
    say(f"{len(rows)} answers in {len(_groups(rows))} group(s) from {cfg.answers}")
    rates = llm_rates(cfg, rows) if cfg.judge == "llm" else validated_rates(cfg, rows)
    return AnswerRatesRun(rates, Path(cfg.out) / "em_rates_answers" / Path(cfg.answers).parent.name)
