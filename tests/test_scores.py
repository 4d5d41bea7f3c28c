"""Judge-free scores: the batched, head-on-answers-only log-probs equal a plain per-example computation."""

import numpy as np
import torch

from lab.data import DEFAULT_SYSTEM_PROMPT, ROLE_CODE, render_example
from lab.scores import answer_logprobs

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
