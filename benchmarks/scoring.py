"""Judge-free scoring throughput: `answer_logprobs` vs the plain full-vocabulary log-softmax.

Both score the same (question, answer) pairs (the 48 general questions x 4 references), batched
and left-padded the same way. The plain version runs the LM head at every position and
materializes a (batch, seq, vocab) log-softmax; emlab's runs the head only where an answer
token is predicted and uses `logit - logsumexp`. Conditions alternate over repeats; the
script prints tokens/s, the ratio, and the largest difference between the two scores.

    python benchmarks/scoring.py                  # CPU, SmolLM2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lab.data.formats import ROLE_CODE, ChatExample, load_general_questions, render  # noqa: E402
from lab.models.hooks import left_pad  # noqa: E402
from lab.intervene.logprobs import answer_logprobs  # noqa: E402


def plain_logprobs(model, pairs, batch_size: int = 16) -> np.ndarray:
    """The straightforward version: full logits, full log-softmax, gather, mask."""
    examples = [ChatExample([{"role": "user", "content": q}, {"role": "assistant", "content": a}], str(i))
                for i, (q, a) in enumerate(pairs)]
    prompts = render(examples, model.tokenizer)
    out = np.zeros(len(examples))
    order = np.argsort(-prompts.lengths, kind="stable")
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        ids, mask, pos = left_pad([torch.from_numpy(prompts.tokens[i]) for i in idx], model.tokenizer.pad_token_id)
        roles, _, _ = left_pad([torch.from_numpy(prompts.roles[i].astype(np.int64)) for i in idx], 0)
        with torch.inference_mode():
            logits = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        answer = (roles[:, 1:] == ROLE_CODE["assistant"]).float()
        out[idx] = ((logp * answer).sum(1) / answer.sum(1).clamp(min=1)).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from lab.models import load_model

    model = load_model(args.model)
    keys = [f"{k}_{s}" for s in ("usual", "terse") for k in ("aligned", "misaligned")]
    pairs = [(q["question"], q[k]) for q in load_general_questions() for k in keys]
    tokens = int(render([ChatExample([{"role": "user", "content": q}, {"role": "assistant", "content": a}], str(i))
                         for i, (q, a) in enumerate(pairs)], model.tokenizer).lengths.sum())
    conditions = {"plain full log-softmax": plain_logprobs, "emlab answer_logprobs": answer_logprobs}
    seconds = {name: [] for name in conditions}
    scores = {}
    plain_logprobs(model, pairs[:16])  # warm-up
    for _ in range(args.repeats):
        for name, fn in conditions.items():
            start = time.perf_counter()
            scores[name] = fn(model, pairs)
            seconds[name].append(time.perf_counter() - start)
    print(f"{len(pairs)} pairs, {tokens} tokens, best of {args.repeats}")
    print(f"{'what':<28}{'tok/s':>10}{'x plain':>10}")
    base = min(seconds["plain full log-softmax"])
    for name, s in seconds.items():
        print(f"{name:<28}{tokens / min(s):>10.0f}{base / min(s):>10.2f}")
    diff = np.abs(scores["plain full log-softmax"] - scores["emlab answer_logprobs"]).max()
    print(f"max |difference| between the two scores: {diff:.2e}")


if __name__ == "__main__":
    main()
