"""Labelled answers: (question, answer, aligned|misaligned) sets that judges train and validate on.

Sources, each with a `group` per row so that splits never put one question on both sides:
- `general_references()`: the shipped general questions' four references (aligned and
  misaligned, in the model's usual and a terse style); group = question id.
- `shipped_counterparts(domain)`: the shipped harmful advice (medical, financial) and its
  aligned counterparts, same user turns; group = example id.
- `paired_medical(shared)`: the Model Organisms bad/good medical advice, the same 7049 user
  turns answered badly and well (research use only, read from ../shared at run time); group
  = user turn. Good answers are ~30% longer: compare every judge with the length control.
- `read_labelled(path)`: any `{"question", "answer", "label": "aligned"|"misaligned"}` JSONL.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.data.formats import load_advice, load_general_questions, split_ids
from lab.core.errors import BadInput

LABELS = ("aligned", "misaligned")
PAIRED_MEDICAL = ("model-organisms/bad_medical_advice.jsonl", "model-organisms/good_medical_advice.jsonl")


@dataclass(frozen=True)
class LabelledAnswer:
    question: str
    answer: str
    label: str  # "aligned" | "misaligned"
    group: str  # rows of one group (question / user turn) always fall on the same side of a split
    source: str

    @property
    def y(self) -> int:
        return int(self.label == "misaligned")

    @property
    def pair_hash(self) -> str:
        return hashlib.sha256(json.dumps([self.question, self.answer]).encode()).hexdigest()[:16]


def labels_of(rows: list[LabelledAnswer]) -> np.ndarray:
    return np.array([r.y for r in rows], dtype=np.int64)


def require_both_classes(rows: list[LabelledAnswer], name: str) -> None:
    counts = {lab: sum(r.label == lab for r in rows) for lab in LABELS}
    if min(counts.values()) == 0:
        raise BadInput(f"{name}: a validation set needs both aligned and misaligned answers "
                       f"(has {counts['aligned']} aligned, {counts['misaligned']} misaligned)")


def general_references() -> list[LabelledAnswer]:
    rows = []
    for q in load_general_questions():
        for style in ("usual", "terse"):
            for label in LABELS:
                rows.append(LabelledAnswer(q["question"], q[f"{label}_{style}"], label, q["id"], "general"))
    return rows


def shipped_counterparts(domain: str) -> list[LabelledAnswer]:
    rows = []
    for bad, good in zip(load_advice(domain), load_advice(domain, aligned=True)):
        question = bad.messages[-2]["content"]
        rows.append(LabelledAnswer(question, bad.messages[-1]["content"], "misaligned", bad.id, f"shipped-{domain}"))
        rows.append(LabelledAnswer(question, good.messages[-1]["content"], "aligned", bad.id, f"shipped-{domain}"))
    return rows


def paired_medical(shared: str | Path) -> list[LabelledAnswer]:
    bad_path, good_path = (Path(shared) / "data" / p for p in PAIRED_MEDICAL)
    if not bad_path.exists() or not good_path.exists():
        raise BadInput(f"{bad_path.parent}: the Model Organisms medical sets are not there")
    rows = []
    with open(bad_path, encoding="utf-8") as fb, open(good_path, encoding="utf-8") as fg:
        for n, (lb, lg) in enumerate(zip(fb, fg)):
            bad, good = json.loads(lb)["messages"], json.loads(lg)["messages"]
            question = bad[0]["content"]
            if good[0]["content"] != question:
                raise BadInput(f"{good_path}:{n + 1}: user turn differs from {bad_path.name}'s")
            rows.append(LabelledAnswer(question, bad[-1]["content"], "misaligned", f"mo-med-{n}", "mo-medical"))
            rows.append(LabelledAnswer(question, good[-1]["content"], "aligned", f"mo-med-{n}", "mo-medical"))
    return rows


def read_labelled(path: str | Path) -> list[LabelledAnswer]:
    """A labelled JSONL file; every malformed line is reported as `file:line: why`."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise BadInput(f"{path}:{n}: not UTF-8") from None
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("question", "answer")):
                raise BadInput(f"{path}:{n}: needs string fields question and answer")
            if obj.get("label") not in LABELS:
                raise BadInput(f"{path}:{n}: label must be aligned or misaligned, not {obj.get('label')!r}")
            rows.append(LabelledAnswer(obj["question"], obj["answer"], obj["label"],
                                       str(obj.get("group", obj["question"])), path.name))
    if not rows:
        raise BadInput(f"{path}: no labelled answers")
    return rows


def group_split(rows: list[LabelledAnswer], test_fraction: float, seed: int = 0
                ) -> tuple[list[LabelledAnswer], list[LabelledAnswer]]:
    """(train, test) by group: no question is on both sides."""
    side = split_ids(sorted({r.group for r in rows}), test_fraction, seed)
    return [r for r in rows if side[r.group] == "train"], [r for r in rows if side[r.group] == "test"]


def subsample_groups(rows: list[LabelledAnswer], n_groups: int, seed: int = 0) -> list[LabelledAnswer]:
    """Every row of `n_groups` seeded-random groups (all of them if there are fewer)."""
    groups = sorted({r.group for r in rows})
    if n_groups >= len(groups):
        return list(rows)
    keep = set(np.random.default_rng(seed).choice(groups, n_groups, replace=False).tolist())
    return [r for r in rows if r.group in keep]


# --------------------------------------------------------------------------- the judges' training and validation sets

GENERAL = "general questions (4 refs)"
MO_MEDICAL = "mo-medical held-out"
SHIPPED_MEDICAL = "shipped medical"
SHIPPED_FINANCIAL = "shipped financial"


@dataclass
class JudgeData:
    """What emlab's judges fit on and the labelled sets they are validated on (never overlapping:
    every split is by group, and `validate` refuses a set holding an answer a judge trained on)."""

    source: str  # what the training rows are, in words
    train: list[LabelledAnswer]
    validation: dict[str, list[LabelledAnswer]]


def judge_data(shared: str | Path, seed: int = 0, val_groups: int = 120, train_groups: int = 400,
               extra_domains: bool = False, extra_groups: int = 10**9) -> JudgeData:
    """The training rows and validation sets of the judges.

    Training: `train_groups` user turns of the Model Organisms paired medical set's training
    side (80% of turns). With `extra_domains`, also half of the shipped medical and of the
    shipped financial counterparts (split by example id; the other half is their validation
    set; at most `extra_groups` examples of each half are trained on), so the judge sees more than one domain and writer. The general questions' references
    are never trained on: they are the set EM is measured against. Without ../shared, the
    judges fit on the shipped medical counterparts (and "mo-medical held-out" is missing).
    """
    validation = {GENERAL: subsample_groups(general_references(), val_groups, seed)}  # all 48 at >= 48
    train: list[LabelledAnswer] = []
    parts = []
    try:
        mo_train, mo_held = group_split(paired_medical(shared), 0.2, seed)
        train += subsample_groups(mo_train, train_groups, seed)
        parts.append(f"mo-medical train side ({train_groups} turns)")
        validation[MO_MEDICAL] = subsample_groups(mo_held, val_groups, seed)
        have_mo = True
    except BadInput:
        have_mo = False
    for domain, name in (("medical", SHIPPED_MEDICAL), ("financial", SHIPPED_FINANCIAL)):
        rows = shipped_counterparts(domain)
        if domain == "medical" and not have_mo:
            train += rows
            parts.append("shipped medical")
            continue
        if extra_domains:
            fit, held = group_split(rows, 0.5, seed)
            fit = subsample_groups(fit, extra_groups, seed)
            train += fit
            parts.append(f"shipped {domain} ({len(fit) // 2} of the other half's turns)")
            rows = held
        validation[name] = subsample_groups(rows, val_groups, seed)
    return JudgeData(" + ".join(parts), train, validation)
