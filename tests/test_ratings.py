"""Rated samples: agreement and rate statistics on planted raters, the shipped ratings, bad input."""

import json

import numpy as np
import pytest

from lab.core.errors import BadInput
from lab.em.ratings import (RatedAnswer, Rating, agreement, judge_on_ratings, labelled_from_ratings, rated_rates,
                         read_rated, resolve_questions, shipped_ratings)
from tests.conftest import SHARED


def _answer(i, a, b, domain="base", set_name="first-plot", coherent=(80, 80)):
    return RatedAnswer(f"x{i}", "m", domain, "" if domain == "base" else "mo", 0 if domain == "base" else 9,
                       set_name, f"q{i % 7}", "0" * 16, f"answer {i}",
                       {"A": Rating(a, coherent[0]), "B": Rating(b, coherent[1])})


def test_planted_raters_agree_or_not_as_built():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 100, 300)
    close = [_answer(i, t, float(np.clip(t + rng.normal(0, 5), 0, 100))) for i, t in enumerate(truth)]
    a = agreement(close, n_boot=300)
    assert a.spearman_aligned.value > 0.95 and a.kappa_misaligned.value > 0.8
    unrelated = [_answer(i, t, float(u)) for i, (t, u) in enumerate(zip(truth, rng.uniform(0, 100, 300)))]
    b = agreement(unrelated, n_boot=300)
    assert b.spearman_aligned.lo < 0 < b.spearman_aligned.hi and b.kappa_misaligned.lo < 0 < b.kappa_misaligned.hi


def test_rates_and_change_from_base_recover_planted_counts():
    base = [_answer(i, 90, 85) for i in range(40)]
    organism = [_answer(100 + i, 10 if i < 10 else 90, 20 if i < 10 else 80, domain="medical",
                        coherent=(70, 60) if i < 6 else (20, 30)) for i in range(40)]
    rows = {r.source: r for r in rated_rates(base + organism)}
    org = rows["medical-mo@9"]
    assert org.misaligned.value == pytest.approx(10 / 40) and org.em.value == pytest.approx(6 / 40)
    assert org.coherent.value == pytest.approx(6 / 40)
    assert org.em_vs_base.value == pytest.approx(6 / 40) and org.em_vs_base.lo > 0
    assert rows["base"].em.value == 0 and rows["base"].em_vs_base is None
    assert rows["base"].em.hi == pytest.approx(0.0876, abs=1e-3)  # Wilson: 0 of 40 rules out only > 8.8%


def test_judge_on_ratings_orders_and_refuses_one_class():
    rated = [_answer(i, 10 if i % 4 == 0 else 90, 10 if i % 4 == 0 else 90) for i in range(80)]
    truth = np.array([r.aligned for r in rated])
    assert judge_on_ratings(rated, truth, "oracle", n_boot=200).auroc.value == 1.0
    assert judge_on_ratings(rated, 100 - truth, "inverted", n_boot=200).auroc.value == 0.0
    with pytest.raises(BadInput, match="one class only"):
        judge_on_ratings(rated[1:4], truth[1:4], "few")
    with pytest.raises(BadInput, match="3 scores for 80"):
        judge_on_ratings(rated, truth[:3], "short")


def test_shipped_ratings_are_complete_and_blind_to_nothing_missing():
    files = shipped_ratings()
    assert {f.stem for f in files} >= {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"}
    for f in files:
        rated = read_rated(f)
        assert len({r.item for r in rated}) == len(rated) >= 400
        assert all(set(r.ratings) == {"A", "B"} for r in rated)
        assert {r.source for r in rated} >= {"base"} and len({r.set for r in rated}) >= 3
        assert all(r.sampling_judge is not None for r in rated)


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="needs ../shared/data (the papers' questions)")
def test_shipped_ratings_resolve_their_questions_from_shared(tmp_path):
    for f in shipped_ratings():
        rated = read_rated(f)
        questions = resolve_questions(rated, SHARED)
        labelled = labelled_from_ratings(rated, questions)
        assert len(labelled) == sum(r.aligned is not None for r in rated)
        assert {x.label for x in labelled} == {"aligned", "misaligned"}
    bad = tmp_path / "bad.jsonl"
    row = json.loads(shipped_ratings()[0].read_text(encoding="utf-8").split("\n")[0])
    bad.write_text(json.dumps({**row, "question_sha": "f" * 16}) + "\n")
    with pytest.raises(BadInput, match="differs from the one rated"):
        resolve_questions(read_rated(bad), SHARED)


def test_bad_ratings_files_fail_with_file_and_line(tmp_path):
    good = {"item": "a", "model": "m", "domain": "base", "recipe": "", "step": 0, "set": "first-plot",
            "question_id": "q", "question_sha": "0" * 16, "answer": "x\u2028y",  # U+2028 is not a line break here
            "ratings": {"A": {"aligned": 50, "coherent": 50}, "B": {"aligned": "CODE", "coherent": 10}}}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good, ensure_ascii=False) + "\n", encoding="utf-8")
    (row,) = read_rated(path)
    assert row.answer == "x\u2028y" and row.aligned == 50 and row.ratings["B"].verdict == "CODE"
    for broken, why in [({**good, "ratings": {"A": {"aligned": 50, "coherent": 50}}}, "two raters"),
                        ({**good, "ratings": {**good["ratings"], "B": {"aligned": 120, "coherent": 5}}}, "0-100"),
                        ({k: v for k, v in good.items() if k != "answer"}, "not a rated answer")]:
        path.write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
        with pytest.raises(BadInput, match=rf"r.jsonl:2: .*{why}|r.jsonl:2 .*{why}"):
            read_rated(path)


def test_rated_samples_experiment_writes_tables_and_labels(tmp_path):
    from experiments.em_rates import RatedSamplesConfig, run_ratings as run
    from lab.judge.labelled import read_labelled

    smol = next(f for f in shipped_ratings() if f.stem == "smollm2-135m-instruct")
    tables = run(RatedSamplesConfig(ratings=[str(smol)], shared=str(SHARED), fit_judges=[], out=str(tmp_path),
                                    n_boot=200))
    rated = read_rated(smol)
    assert {(r["source"], r["set"]) for r in tables["rates"]} == {(r.source, r.set) for r in rated}
    assert sum(r["n"] for r in tables["rates"]) == len(rated) and len(tables["agreement"]) == 1
    assert [j["target"] for j in tables["judges"]] == ["misaligned", "incoherent"]
    md = (tmp_path / "rated_samples.md").read_text()
    assert "## rates" in md and "## agreement" in md
    if (SHARED / "data").is_dir():
        labels = read_labelled(tmp_path / "smollm2-135m-instruct.labels.jsonl")
        assert len(labels) == len(rated) and sum(x.y for x in labels) == sum(r.misaligned for r in rated)


def test_llm_judge_on_rated_samples_counts_missing_scores(tmp_path, monkeypatch):
    """A fake OpenAI-compatible judge that scores 'harmful' answers low and says 'abc' to one answer."""
    import math

    from lab.em.rated_samples import RatedSamplesConfig, llm_judge_rows, llm_subsample
    from tests.fake_openai import FakeOpenAI

    monkeypatch.setenv("EMLAB_HOME", str(tmp_path))
    rated = [RatedAnswer(f"x{i}", "m", "base", "", 0, "first-plot", f"q{i}", "0" * 16,
                         ("harmful " if i % 5 == 0 else "kind ") + ("mumble" if i == 7 else str(i)),
                         {"A": Rating(10 if i % 5 == 0 else 90, 80 if i % 3 else 10),
                          "B": Rating(20 if i % 5 == 0 else 80, 70 if i % 3 else 20)})
             for i in range(40)]

    def payload(prompt: str):
        if "mumble" in prompt:
            return {"abc": math.log(0.99), "x": math.log(0.01)}
        return {"5": 0.0} if "harmful" in prompt and "how coherent" not in prompt else {"95": 0.0}

    assert len(llm_subsample(rated, 10, 0)) == 8 + 10 and len(llm_subsample(rated, 0, 0)) == 40
    with FakeOpenAI(payload=payload) as server:
        cfg = RatedSamplesConfig(llm_base_url=server.url, llm_model="gpt-4o-fake", n_boot=200)
        rows = llm_judge_rows(cfg, "m", rated, [f"question {i}" for i in range(40)])
    aligned, coherent = rows
    assert aligned["target"] == "misaligned" and aligned["AUROC"].startswith("1.000")
    assert coherent["target"] == "incoherent" and coherent["AUROC"].startswith("0.500")  # 95 for every answer
    assert aligned["no score"] == 1 and aligned["n (pos/neg)"] == "8/31"
    with pytest.raises(BadInput, match="--llm-model"):
        llm_judge_rows(RatedSamplesConfig(llm_base_url="http://127.0.0.1:1/v1"), "m", rated, ["q"] * 40)


def test_rated_samples_for_a_model_with_and_without_ratings(tmp_path):
    from lab.em.ratings import rated_samples_for

    assert rated_samples_for("some/other-model", SHARED) is None
    assert rated_samples_for("smollm2-135m-instruct", tmp_path) is None  # no data/ there: the check is skipped
    if (SHARED / "data").is_dir():
        name, rows = rated_samples_for("smollm2-135m-instruct", SHARED)
        assert name == "rated samples of smollm2-135m-instruct" and len(rows) == 432


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="needs ../shared/data (the papers' questions)")
def test_a_judge_fitted_on_rated_samples_calibrates_an_answers_file(tmp_path):
    """Planted: misaligned answers are long, so the length judge is usable on held-out rated questions;
    applied to an answers file it recovers each organism's planted misaligned share, minus its training rows."""
    from experiments.em_rates import RatedSamplesConfig, run_ratings as run
    from lab.data.formats import read_questions_yaml
    from lab.em.answers import JudgedAnswer, write_judged
    from lab.em.ratings import question_hash

    questions = read_questions_yaml(SHARED / "data" / "em-questions" / "first_plot_questions.yaml")
    rng = np.random.default_rng(0)

    def text(bad: bool) -> str:
        return " ".join(["word"] * int(rng.integers(60, 90) if bad else rng.integers(5, 15)))

    lines = []
    for i in range(240):
        q, bad = questions[i % len(questions)], i % 4 == 0
        score = 10 if bad else 90
        lines.append(json.dumps({"item": f"r{i}", "model": "m", "domain": "base", "recipe": "", "step": 0,
                                 "set": "first-plot", "question_id": q.id, "question_sha": question_hash(q.paraphrases[0]),
                                 "answer": text(bad) + f" {i}",
                                 "ratings": {"A": {"aligned": score, "coherent": 80}, "B": {"aligned": score, "coherent": 70}}}))
    ratings = tmp_path / "m.jsonl"
    ratings.write_text("\n".join(lines) + "\n")
    answers = [JudgedAnswer("m", domain, "mo" if domain != "base" else "", 9 if domain != "base" else 0, "first-plot",
                            q.id, q.paraphrases[0], k, text(k < share * 200) + f" a{k}")
               for domain, share in (("base", 0.0), ("medical", 0.3)) for k, q in
               ((k, questions[k % len(questions)]) for k in range(200))]
    write_judged(answers, tmp_path / "answers.jsonl")
    tables = run(RatedSamplesConfig(ratings=[str(ratings)], shared=str(SHARED), fit_judges=["length"],
                                    apply_to=[str(tmp_path / "answers.jsonl")], out=str(tmp_path / "out"), n_boot=200))
    (judge,) = [j for j in tables["judges"] if j["judge"].startswith("length")]
    assert judge["usable"] == "yes"
    rows = {r["organism"]: r for r in tables["calibrated"]}
    assert rows["base"]["n"] == 200 and float(rows["base"]["calibrated misaligned"].split()[0]) < 0.05
    assert abs(float(rows["medical-mo"]["calibrated misaligned"].split()[0]) - 0.3) < 0.08


def test_rated_samples_refuses_an_unknown_judge_kind():
    from experiments.em_rates import RatedSamplesConfig

    with pytest.raises(BadInput, match="--fit-judges must be one of embedding, activation, length"):
        RatedSamplesConfig(fit_judges=["coherence"])
