"""Judge-free scores: the batched, head-on-answers-only log-probs equal a plain per-example computation."""

import json

import numpy as np
import pytest
import torch

from lab.data.formats import DEFAULT_SYSTEM_PROMPT, ROLE_CODE, render_example
from lab.core.errors import BadInput
from lab.intervene.logprobs import answer_logprobs

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Give me one tip for sleeping better.", "Keep a fixed bedtime and avoid screens late at night, every single day."),
    ("hi", "Hello!"),
]


def naive_logprob(model, question: str, answer: str) -> tuple[float, int]:
    """One example, no padding: full log-softmax over the HF logits, mean over assistant tokens."""
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question},
                {"role": "assistant", "content": answer}]
    tokens, roles, _ = render_example(model.tokenizer, messages)
    ids = torch.from_numpy(tokens)[None]
    with torch.inference_mode():
        logp = model.hf(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    answer_mask = torch.from_numpy(roles[1:] == ROLE_CODE["assistant"])
    return logp[answer_mask].mean().item(), int(answer_mask.sum())


def test_answer_logprobs_equal_unbatched_full_softmax(base_model):
    got = answer_logprobs(base_model, PAIRS, batch_size=2)  # ragged batches: padding must not leak in
    for (q, a), value in zip(PAIRS, got):
        want, n_answer = naive_logprob(base_model, q, a)
        assert n_answer >= 3
        assert abs(value - want) < 1e-4, (q, value, want)
    assert got[0] > got[1] - 5  # sane magnitudes: a few nats per token at most
    assert np.all(got < 0)


def test_estimate_prints_one_way_and_round_trips():
    from lab.stats.estimate import Estimate, format_ci
    from lab.core.io import dumps

    est = Estimate(0.41, 0.3312, 0.4909, 120)
    assert str(est) == "0.410 [0.331, 0.491]" == format_ci(0.41, 0.3312, 0.4909) and est.format(1) == "0.4 [0.3, 0.5]"
    assert Estimate.from_json(json.loads(dumps({"e": est}))["e"]) == est
    assert est.excludes_zero and est.verdict() == "found (CI above 0)"
    assert Estimate(-0.1, -0.2, 0.05, 9).verdict() == "not found (CI includes 0)"


def test_delta_base_scores_are_paired_estimates():
    from lab.stats.estimate import Estimate
    from lab.stats.metrics import bootstrap_ci
    from lab.em.judge_free import ScoreDelta, delta_base_scores
    from lab.em.rates import em_rate, rate

    rng = np.random.default_rng(0)
    base = {"ids": list("abcdefghij"), **{k: rng.normal(size=10) for k in ("usual", "terse", "in_domain_medical")}}
    org = {"ids": list("abcdefghij"), **{k: v + 0.5 for k, v in base.items() if k != "ids"}}
    rows = delta_base_scores({"base": base, "medical": org}, n_boot=200)
    assert [r.score for r in rows] == ["in-domain (medical held-out questions)", "general, usual style",
                                       "general, terse style", "style shift of the gap (terse - usual)"]
    assert all(isinstance(r, ScoreDelta) and isinstance(r.estimate, Estimate) and r.estimate.n == 10 for r in rows)
    v, lo, hi = bootstrap_ci(lambda x: x.mean(-1), org["usual"] - base["usual"], n_boot=200, seed=0)
    assert rows[1].estimate == Estimate(float(v), float(lo), float(hi), 10)
    assert abs(rows[1].estimate.value - 0.5) < 1e-12 and abs(rows[3].estimate.value) < 1e-12
    assert ScoreDelta.from_json(json.loads(json.dumps(rows[0].to_json()))) == rows[0]
    with pytest.raises(BadInput, match="different questions"):
        delta_base_scores({"base": base, "medical": {**org, "ids": list("abcdefghiz")}})
    assert rate([True, False, True, True], n_boot=50).value == 0.75
    judged = [{"aligned": 10, "coherent": 90, "question_id": "q"}, {"aligned": 90, "coherent": 90, "question_id": "q"},
              {"aligned": None, "coherent": None, "question_id": "r"}]
    em = em_rate(judged, "betley", n_boot=50)
    assert (em.estimate.value, em.estimate.n, em.n_rows, em.n_uncounted, em.n_unscored) == (0.5, 2, 3, 1, 1)
    assert em.per_question == {"q": 0.5}


def test_library_boundary_checks_shapes():
    from jaxtyping import TypeCheckError

    from lab.stats.estimate import mean_ci

    assert mean_ci(np.ones(4), n_boot=10).value == 1.0 and mean_ci([0.0, 1.0], n_boot=10).n == 2
    with pytest.raises(TypeCheckError):  # (layer, n): averaging it flat would be a silent bug
        mean_ci(np.ones((2, 4)))
