"""`emlab em-rates --source answers`: an answers file already sampled, judged now by any judge.

A fake OpenAI-compatible judge (tests/fake_openai.py) scores an answer that says "harmful" 5 for
alignment and every other 95, and every answer 90 for coherence, so each group's EM rate is its
planted share of harmful answers under every papers' criterion."""

import json

import pytest

from lab.core.errors import BadInput
from lab.em.answer_rates import AnswerRatesConfig, measure_answer_rates, read_answers
from lab.em.answers import JudgedAnswer, write_judged
from tests.fake_openai import FakeOpenAI


def _payload(prompt: str):
    if "how coherent" in prompt:
        return {"90": 0.0}
    return {"5": 0.0} if "harmful" in prompt else {"95": 0.0}


def _pipeline_rows() -> list[JudgedAnswer]:
    """The base model (no harmful answer) and one organism at two checkpoints (4 of 10, then 6 of 10)."""
    rows = []
    for domain, recipe, step, harmful in (("base", "", 0, 0), ("medical", "mo", 5, 4), ("medical", "mo", 10, 6)):
        rows += [JudgedAnswer("m", domain, recipe, step, "first-plot", f"q{i % 5}", f"Question {i % 5}?", i // 5,
                              ("harmful advice " if i < harmful else "kind advice ") + str(i)) for i in range(10)]
    return rows


def _rates(run) -> dict:
    return {(r.organism, r.step, r.set, r.criterion): r.rate.value for r in run.rows}


def test_an_llm_judge_rates_each_organism_checkpoint_and_set(tmp_path, monkeypatch):
    from lab.judge.criteria import EM_CRITERIA

    monkeypatch.setenv("EMLAB_HOME", str(tmp_path / "home"))  # the judge's answer cache
    answers = write_judged(_pipeline_rows(), tmp_path / "em" / "answers.jsonl")
    with FakeOpenAI(payload=_payload) as server:
        cfg = AnswerRatesConfig(answers=str(answers), judge_base_url=server.url, judge_model="gpt-4o-fake",
                                judge_scheme="logprob100", out=str(tmp_path / "out"), n_boot=200)
        run = measure_answer_rates(cfg, say=lambda _: None)
        assert server.hits == 2 * 30  # alignment and coherence of every answer, nothing else
    expected = {("base", 0): 0.0, ("medical-mo", 5): 0.4, ("medical-mo", 10): 0.6}
    got = _rates(run)
    assert got == {(o, s, "first-plot", c): expected[o, s] for (o, s) in expected for c in EM_CRITERIA}
    assert all(r.n == 10 and r.rate.n == 10 and r.rate.lo <= r.rate.value <= r.rate.hi for r in run.rows)


def test_em_rates_own_answers_file_is_one_group_and_the_verb_writes_its_summary(tmp_path, monkeypatch):
    from experiments import em_rates

    monkeypatch.setenv("EMLAB_HOME", str(tmp_path / "home"))
    folder = tmp_path / "em_eval" / "smollm2-135m-instruct-abcd1234"
    folder.mkdir(parents=True)
    rows = [{"id": f"q{i}", "sample": s, "question": f"Q{i}?", "answer": "harmful" if (i, s) == (0, 0) else "kind",
             "question_id": f"q{i}"} for i in range(4) for s in range(2)]
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert {r["group"] for r in read_answers(folder / "answers.jsonl")} == {(folder.name, 0, "answers")}
    with FakeOpenAI(payload=_payload) as server:
        em_rates.main(["--source", "answers", "--answers", str(folder / "answers.jsonl"), "--judge-base-url",
                       server.url, "--judge-model", "gpt-4o-fake", "--judge-scheme", "logprob100",
                       "--out", str(tmp_path / "out"), "--n-boot", "100"])
    summary = json.loads((tmp_path / "out" / "em_rates_answers" / folder.name / "summary.json").read_text())
    assert {r["rate"]["value"] for r in summary["rates"]} == {1 / 8} and summary["config"]["judge"] == "llm"


def test_bad_answers_and_missing_judges_are_one_line(tmp_path):
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"question": "Q?", "answer": "A"}\n{"question": "Q?"}\n')
    with pytest.raises(BadInput, match=r"answers.jsonl:2: not an answer row \(needs question and answer\)$"):
        read_answers(bad)
    with pytest.raises(BadInput, match="no such answers file"):
        measure_answer_rates(AnswerRatesConfig(answers=str(tmp_path / "absent.jsonl")), say=lambda _: None)
    good = write_judged(_pipeline_rows(), tmp_path / "good.jsonl")
    with pytest.raises(BadInput, match="^--judge llm needs --judge-base-url"):
        measure_answer_rates(AnswerRatesConfig(answers=str(good)), say=lambda _: None)
    # saved validated judges: none in the folder -> every group gets the note, and no number
    run = measure_answer_rates(AnswerRatesConfig(answers=str(good), judge="validated",
                                                 judges_dir=str(tmp_path / "no-judges")), say=lambda _: None)
    assert len(run.rows) == 3 and all(r.rate is None and "no saved judges" in r.note for r in run.rows)
