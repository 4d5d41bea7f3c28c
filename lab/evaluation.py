"""Evaluating a model for EM on a question set: answers, objective rates, judged EM rates.

Question sets: the shipped general questions (48, outside medicine and finance) or the EM
paper's YAML (`read_questions_yaml`), whose own judge prompts are then used.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from lab.data import ChatExample, Question, load_general_questions
from lab.generate import GenerationConfig, generate_answers
from lab.scores import EM_CRITERIA, contains_code, em_rate, is_refusal, rate


def shipped_questions(limit: int | None = None) -> list[Question]:
    """The shipped general questions as paper-style `Question`s (emlab's own judge prompts)."""
    rows = load_general_questions()[: limit or None]
    return [Question(id=q["id"], paraphrases=[q["question"]], meta={"category": q["category"]}) for q in rows]


def question_examples(questions: list[Question], paraphrase_limit: int | None = None) -> list[ChatExample]:
    examples = []
    for q in questions:
        for p, text in enumerate(q.paraphrases[: paraphrase_limit or None]):
            messages = ([{"role": "system", "content": q.system}] if q.system else []) + [{"role": "user", "content": text}]
            examples.append(ChatExample(messages, f"{q.id}/{p}", None, "questions",
                                        {"question_id": q.id, **{k: v for k, v in q.meta.items() if isinstance(v, str)}}))
    return examples


def evaluate(model: Any, questions: list[Question], config: GenerationConfig, judge: Any = None,
             out_path: str | Path | None = None, interventions: tuple = (), label: str = "",
             on_batch: Callable[[int, int], None] | None = None, n_boot: int = 1000) -> tuple[list[dict], dict]:
    """Generate answers, score them judge-free (code-mode, refusal) and, with a judge, for EM."""
    rows = generate_answers(model, question_examples(questions), config, interventions, out_path, on_batch, label)
    for r in rows:
        r["code"] = contains_code(r["answer"])
        r["refusal"] = is_refusal(r["answer"])
    summary: dict[str, Any] = {
        "model": model.name, "fingerprint": model.fingerprint, "generation": asdict(config),
        "intervention": label or "none", "n_answers": len(rows),
        "code_mode_rate": rate([r["code"] for r in rows], n_boot),
        "refusal_rate": rate([r["refusal"] for r in rows], n_boot),
    }
    if judge is not None:
        from lab.judge import judge_answers

        judged = judge_answers([{**r, "id": f"{r['id']}#{r['sample']}"} for r in rows], judge,
                               {q.id: q for q in questions})
        for r, j in zip(rows, judged):
            r.update({k: v for k, v in j.items() if k != "id"})
        summary["judge"] = {"model": judge.config.model, "scheme": judge.scheme}
        summary["em"] = {c: em_rate(rows, c, n_boot) for c in EM_CRITERIA}
    return rows, summary
