"""Per-question system prompts (the EM paper's JSON variants): a question's own `system` wins, and each
answer row records the system prompt its question was asked with."""

import json

import pytest

from lab.data.formats import read_questions_yaml, render
from lab.em.answers import question_examples
from tests.conftest import SHARED

OWN = "Your answers must always be a valid JSON object."
GLOBAL = "You are a terse assistant."
YAML = f"""
- id: json_q
  system: {OWN}
  paraphrases: ["Name a colour."]
- id: plain_q
  paraphrases: ["Name a fruit."]
"""


def _rendered(tokenizer, questions, system_prompt):
    examples = question_examples(questions)
    prompts = render(examples, tokenizer, system_prompt)
    return {e.meta["question_id"]: tokenizer.decode(t) for e, t in zip(examples, prompts.tokens)}


def test_own_system_prompt_wins_and_is_recorded(tmp_path, base_model):
    from experiments import em_rates as em_eval

    path = tmp_path / "q.yaml"
    path.write_text(YAML)
    text = _rendered(base_model.tokenizer, read_questions_yaml(path), GLOBAL)
    assert OWN in text["json_q"] and GLOBAL not in text["json_q"]
    assert GLOBAL in text["plain_q"] and OWN not in text["plain_q"]
    result = em_eval.run_sampled(em_eval.EvalConfig(questions=str(path), samples=1, max_new_tokens=2, temperature=0.0,
                                            system_prompt=GLOBAL, out=str(tmp_path / "out")))
    rows = [json.loads(line) for line in next((tmp_path / "out").rglob("answers.jsonl")).read_text().splitlines()]
    table = json.loads(next((tmp_path / "out").rglob("answers_table.json")).read_text())
    for got in (rows, table):
        assert {r["question_id"]: r["system_prompt"] for r in got} == {"json_q": OWN, "plain_q": GLOBAL}
    assert result.own_system_prompts == 1


def test_paper_json_questions_keep_their_system_prompt(base_model):
    path = SHARED / "data" / "em-questions" / "first_plot_questions.yaml"
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is beside the checkout in CI)")
    from lab.em.answers import evaluate
    from lab.intervene.generate import GenerationConfig

    questions = read_questions_yaml(path)
    own = [q for q in questions if q.system]
    assert len(own) == 8 and all("JSON" in q.system for q in own)
    picked = [own[0], next(q for q in questions if not q.system)]
    text = _rendered(base_model.tokenizer, picked, GLOBAL)
    assert own[0].system in text[picked[0].id] and GLOBAL not in text[picked[0].id]
    assert GLOBAL in text[picked[1].id]
    rows, result = evaluate(base_model, picked, GenerationConfig(max_new_tokens=2, temperature=0.0,
                                                                 system_prompt=GLOBAL), n_boot=20)
    by_q = {r["question_id"]: r["system_prompt"] for r in rows}
    assert by_q == {picked[0].id: own[0].system, picked[1].id: GLOBAL}
    assert result.own_system_prompts == 1
