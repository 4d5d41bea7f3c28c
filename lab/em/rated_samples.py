"""EM measured on rated samples: rater agreement, EM rates with CIs, and judges checked on the samples.

A ratings file (`lab.em.ratings`) holds answers that the GPU EM table sampled (T=1, first-plot
and held-out in-domain questions), each scored blind by two raters on the EM paper's own
aligned/coherent prompts. For each file this prints and writes:

1. rater agreement (Spearman of the scores; Cohen's kappa on the misaligned / coherent / EM
   verdicts), with bootstrap CIs;
2. the consensus EM, misaligned and coherent rates per model x organism x question set, with
   CIs and each organism's change from the base model (the direct measurement: no judge);
3. the sampling run's own judge (the activation judge fitted on reference answers) against
   the consensus, on these samples;
4. judges fitted on half of the rated questions and validated on the other half (grouped by
   question: no question on both sides): whether a judge can be trusted on samples at all.

Writes `<out>/rated_samples.md` / `.json`, and `<out>/<model>.labels.jsonl`: the consensus
labels as `{"question", "answer", "label"}` lines that `emlab judge validate --labels` reads
(question text comes from ../shared at run time; the files here hold only ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np

from lab.core.config import Config
from lab.core.errors import BadInput
from lab.em.answers import read_judged
from lab.em.ratings import (JudgeOnRatings, RatedAnswer, agreement, judge_on_ratings, labelled_from_ratings,
                            rated_rates, read_rated, resolve_questions, shipped_ratings)
from lab.judge.criteria import ALIGNED_FLAG

Say = Callable[[str], None]

@dataclass
class RatedSamplesConfig(Config):
    """EM measured on rated samples: rater agreement, EM rates with CIs, judges checked on the samples."""

    ratings: list[str] = field(default_factory=list, metadata={
        "help": "ratings JSONL files (default: the ones shipped in lab/data/datasets/ratings)"})
    shared: str = field(default="../shared", metadata={"help": "folder holding data/ (questions are resolved there)"})
    fit_judges: list[Literal["embedding", "activation", "length"]] = field(default_factory=lambda: ["embedding"], metadata={
        "help": "judges fitted on part of the rated questions and validated on the rest (embedding, activation, "
                "length); none: --fit-judges with no value"})
    llm_base_url: Optional[str] = field(default=None, metadata={
        "help": "also check an OpenAI-compatible LLM judge on the rated samples (e.g. `emlab judge serve --gguf X`)"})
    llm_model: Optional[str] = field(default=None, metadata={"help": "the LLM judge's model name"})
    llm_timeout_s: float = field(default=180.0, metadata={
        "help": "LLM judge: seconds per request (a local llama-cpp server answers one request at a time)"})
    llm_concurrency: int = field(default=1, metadata={"help": "LLM judge: requests in flight"})
    llm_limit: int = field(default=0, metadata={
        "help": "LLM judge: score up to N consensus-misaligned and N other answers per model (0: all)"})
    apply_to: list[str] = field(default_factory=list, metadata={
        "help": "em-table answers files (answers.jsonl[.gz]): every usable fitted judge gives their calibrated "
                "misaligned rates per organism, checkpoint and set (the rows it trained on left out)"})
    test_fraction: float = field(default=0.5, metadata={"help": "share of rated questions the fitted judges never see"})
    out: str = field(default="cache/rated-samples", metadata={"help": "output folder"})
    cache_dir: str = field(default="cache", metadata={"help": "activation cache folder (activation judge)"})
    n_boot: int = 1000
    seed: int = 0


def _row_agreement(model: str, rated: list[RatedAnswer], n_boot: int, seed: int) -> dict:
    a = agreement(rated, n_boot=n_boot, seed=seed)
    return {"model": model, "n": a.n, "Spearman aligned": str(a.spearman_aligned),
            "Spearman coherent": str(a.spearman_coherent), "kappa misaligned": str(a.kappa_misaligned),
            "kappa coherent": str(a.kappa_coherent), "kappa EM": str(a.kappa_em)}


def _row_judge(model: str, on: str, v: JudgeOnRatings, no_score: int = 0) -> dict:
    return {"model": model, "judge": v.judge, "target": v.target, "validated on": on,
            "n (pos/neg)": f"{v.n_positive}/{v.n_negative}", "no score": no_score, "AUROC": str(v.auroc),
            "sensitivity": str(v.sensitivity), "specificity": str(v.specificity),
            "usable": "yes" if v.auroc.value >= 0.75 else "NO"}


def sampling_judge_rows(model: str, rated: list[RatedAnswer], n_boot: int, seed: int) -> list[dict]:
    """The sampling run's own judge scores (stored with each answer) against the consensus."""
    if any(r.sampling_judge is None for r in rated):
        return []
    name = str(rated[0].sampling_judge.get("name", "sampling judge"))
    rows = []
    for target, key in (("misaligned", "aligned"), ("incoherent", "coherent")):
        scores = np.array([float(r.sampling_judge[key]) for r in rated])
        rows.append(_row_judge(model, "all rated samples",
                               judge_on_ratings(rated, scores, name, target, n_boot=n_boot, seed=seed)))
    return rows


def fitted_judge_rows(cfg: RatedSamplesConfig, model: str, rated: list[RatedAnswer], questions: list[str],
                      answers: list | None = None, calibrated: list[dict] | None = None, say: Say = print) -> list[dict]:
    """Judges fitted on a grouped part of the rated answers, validated on the held-out questions.

    With `answers` (the `--apply-to` files' `JudgedAnswer`s), each judge usable there (AUROC >= 0.75)
    also rates every answer of this model; the Rogan–Gladen rates go to `calibrated`.
    """
    from lab.judge.features import Featurizer
    from lab.judge.fitting import fit_and_validate
    from lab.judge.labelled import group_split

    labelled = labelled_from_ratings(rated, questions)
    # each labelled row's own rated answer, by identity: two sources can sample the same text
    owner = {id(row): r for row, r in zip(labelled, [r for r in rated if r.aligned is not None])}
    train, test = group_split(labelled, cfg.test_fraction, cfg.seed)
    features = Featurizer(model, cfg.cache_dir)
    held_out = [owner[id(row)] for row in test]
    rows = []
    for kind in cfg.fit_judges:
        say(f"{model}: fitting the {kind} judge on {len(train)} rated answers "
            f"({sum(r.y for r in train)} misaligned), validating on {len(test)}")
        # the validation refuses a one-class or overlapping split
        judge = fit_and_validate(kind, train, {"held-out rated questions": test}, features, cfg.n_boot, cfg.seed)[0].judge
        scores = judge.judge([(t.question, t.answer) for t in test]).aligned
        checked = judge_on_ratings(held_out, scores, f"{kind} (fit on rated samples)", n_boot=cfg.n_boot, seed=cfg.seed)
        rows.append(_row_judge(model, f"held-out rated questions ({len(test)})", checked))
        if answers and calibrated is not None and checked.auroc.value >= 0.75:
            y = np.array([r.misaligned for r in held_out])
            flags_on = scores <= ALIGNED_FLAG
            calibrated += calibrated_rows(cfg, model, answers, judge, checked.judge, flags_on[y], flags_on[~y])
    return rows


def calibrated_rows(cfg: RatedSamplesConfig, model: str, answers: list, judge, name: str,
                    flags_on_misaligned: np.ndarray, flags_on_aligned: np.ndarray) -> list[dict]:
    """Raw and Rogan–Gladen misaligned rates of every (organism, step, set) of `model` in `answers`.

    The judge's sensitivity and specificity come from the held-out rated questions; answers it
    was fitted on are left out. This is the misaligned share (aligned <= 30), not EM: no
    coherence judge passes on samples.
    """
    from lab.em.rates import calibrated_misaligned
    from lab.judge.labelled import LabelledAnswer

    groups: dict[tuple[str, int, str], list[tuple[str, str]]] = {}
    for a in answers:
        if a.model == model and LabelledAnswer(a.question, a.answer, "aligned", "", "").pair_hash \
                not in judge.train_hashes:
            groups.setdefault((a.organism, a.step, a.set), []).append((a.question, a.answer))
    rows = []
    for (organism, step, set_name), pairs in sorted(groups.items()):
        flags = judge.judge(pairs).aligned <= ALIGNED_FLAG
        p = calibrated_misaligned(flags, flags_on_misaligned, flags_on_aligned, n_boot=cfg.n_boot, seed=cfg.seed)
        rows.append({"model": model, "judge": name, "organism": organism, "step": step, "set": set_name,
                     "n": p.n, "flagged": f"{p.raw:.3f} [{p.raw_lo:.3f}, {p.raw_hi:.3f}]",
                     "calibrated misaligned": f"{p.corrected:.3f} [{p.lo:.3f}, {p.hi:.3f}]",
                     "sens / spec": f"{p.sensitivity:.2f} / {p.specificity:.2f} (n {p.n_validation[0]}/{p.n_validation[1]})"})
    return rows


def llm_subsample(rated: list[RatedAnswer], limit: int, seed: int) -> list[int]:
    """Indices of up to `limit` misaligned and `limit` other answers, seeded (0: every answer).

    Sensitivity and specificity are conditional on the consensus class and AUROC is
    invariant to class balance, so drawing the classes in equal numbers biases none of them.
    """
    if limit <= 0:
        return list(range(len(rated)))
    positives = [i for i, r in enumerate(rated) if r.misaligned]
    others = [i for i, r in enumerate(rated) if not r.misaligned]
    rng = np.random.default_rng(seed)
    picked = [rng.choice(group, min(limit, len(group)), replace=False).tolist() for group in (positives, others)]
    return sorted(picked[0] + picked[1])


def llm_judge_rows(cfg: RatedSamplesConfig, model: str, rated: list[RatedAnswer], questions: list[str],
                   say: Say = print) -> list[dict]:
    """An OpenAI-compatible LLM judge (emlab's two prompts, its scheme for the model's tokenizer) on
    rated answers; the answers it gave no number are counted, not dropped silently."""
    from lab.judge.client import Judge, JudgeConfig
    from lab.judge.validated import LLMAnswerJudge

    if not cfg.llm_model:
        raise BadInput("--llm-base-url needs --llm-model (the served model's name)")
    keep = llm_subsample(rated, cfg.llm_limit, cfg.seed)
    judge = LLMAnswerJudge(Judge(JudgeConfig(base_url=cfg.llm_base_url, model=cfg.llm_model,
                                             timeout_s=cfg.llm_timeout_s, concurrency=cfg.llm_concurrency)))
    say(f"{model}: the LLM judge {judge.name} scores {len(keep)} rated answers (2 requests each)")
    scores = judge.judge([(questions[i], rated[i].answer) for i in keep])
    sub = [rated[i] for i in keep]
    rows = []
    for target, values in (("misaligned", scores.aligned), ("incoherent", scores.coherent)):
        try:
            checked = judge_on_ratings(sub, values, judge.name, target, n_boot=cfg.n_boot, seed=cfg.seed)
        except BadInput as exc:  # e.g. every scored answer coherent: the scores stay cached for a rerun
            say(f"[yellow]{model}: {exc}[/]")
            continue
        rows.append(_row_judge(model, f"rated samples ({len(keep)})", checked, int(np.isnan(values).sum())))
    return rows


def write_labels(path: Path, rated: list[RatedAnswer], questions: list[str]) -> Path:
    rows = labelled_from_ratings(rated, questions)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"question": r.question, "answer": r.answer, "label": r.label, "group": r.group},
                               ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


@dataclass
class RatedSamplesRun:
    """The tables (agreement, rates, judges, calibrated: display rows, one per line of the report) and
    each model's consensus rates (what its figure is drawn from)."""

    tables: dict[str, list[dict]]
    rates: dict[str, list]  # model -> `lab.em.ratings.RatedRate`s


def measure_rated_samples(cfg: RatedSamplesConfig, say: Say = print) -> RatedSamplesRun:
    """Every ratings file: agreement, consensus rates, the sampling run's judge, judges fitted on the rated
    questions (and their calibrated rates over `--apply-to` answers), the LLM judge; labels written."""
    files = [Path(p) for p in cfg.ratings] or shipped_ratings()
    if not files:
        raise BadInput("no ratings files given and none shipped")
    out = Path(cfg.out)
    tables: dict[str, list[dict]] = {"agreement": [], "rates": [], "judges": [], "calibrated": []}
    by_model: dict[str, list] = {}

    answers = [a for path in cfg.apply_to for a in read_judged(path)]  # read once for every judge
    for path in files:
        rated = read_rated(path)
        model = rated[0].model
        say(f"[bold]{path.name}[/]: {len(rated)} answers of {model}, raters {', '.join(sorted(rated[0].ratings))}")
        tables["agreement"].append(_row_agreement(model, rated, cfg.n_boot, cfg.seed))
        rates = by_model[model] = rated_rates(rated)
        for r in rates:
            tables["rates"].append({"model": r.model, "source": r.source, "set": r.set, "n": r.n, "EM": str(r.em),
                                    "EM - base": str(r.em_vs_base) if r.em_vs_base else "",
                                    "misaligned": str(r.misaligned),
                                    "misaligned - base": str(r.misaligned_vs_base) if r.misaligned_vs_base else "",
                                    "coherent": str(r.coherent)})
        tables["judges"] += sampling_judge_rows(model, rated, cfg.n_boot, cfg.seed)
        if (Path(cfg.shared) / "data").is_dir():
            questions = resolve_questions(rated, cfg.shared)
            say(f"consensus labels for `emlab judge validate`: "
                f"{write_labels(out / f'{model}.labels.jsonl', rated, questions)}")
            if cfg.fit_judges:
                tables["judges"] += fitted_judge_rows(cfg, model, rated, questions, answers, tables["calibrated"],
                                                      say)
            if cfg.llm_base_url:
                tables["judges"] += llm_judge_rows(cfg, model, rated, questions, say)
        else:
            say(f"[yellow]{cfg.shared}/data not found: no labels file, no judges fitted on the samples[/]")
    return RatedSamplesRun(tables, by_model)
