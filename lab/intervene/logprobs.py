"""Teacher-forced log-probs of answers, plain or under interventions, and the coherence guard.

    answer_logprobs(model, [(question, answer), ...])      # mean per-token log-prob of each answer
    logprobs_under(model, pairs, (intervention,))          # the same with a steering edit in place
    coherence_change(model, (iv,), baseline, pairs)        # Estimate: change per token on neutral text

Every judge-free score in emlab (EM scores, refusal log-odds, the coherence guard, the
coherence judge) is a difference of these log-probs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float

from lab.data.formats import DEFAULT_SYSTEM_PROMPT, ROLE_CODE, ChatExample, load_general_questions, render
from lab.models import ModelLike
from lab.models.hooks import left_pad
from lab.stats.estimate import Estimate, mean_ci

COHERENCE_BOOT = 500  # bootstrap replicates of the coherence guard's CI (a guard, not a headline number)


def answer_logprobs(model: ModelLike, pairs: Sequence[tuple[str, str]], system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                    batch_size: int = 16, interventions: tuple = ()) -> Float[np.ndarray, " n"]:
    """Mean per-token log-prob of each answer given its question (assistant tokens only).

    The LM head runs only at positions that predict an assistant token, and log-probs come
    from `logit - logsumexp`: no (batch, seq, vocab) log-softmax is ever materialized.
    `interventions` (lab.intervene.steering) apply during the forward; `positions="prompt"` edits each
    row's question tokens only, so the answer is scored as the edited prompt primes it.
    """
    from lab.intervene.steering import steer

    examples = [ChatExample([{"role": "user", "content": q}, {"role": "assistant", "content": a}], str(i))
                for i, (q, a) in enumerate(pairs)]
    prompts = render(examples, model.tokenizer, system_prompt)
    out = np.zeros(len(examples))
    order = np.argsort(-prompts.lengths, kind="stable")
    decoder, head = model.hf.get_decoder(), model.hf.get_output_embeddings()
    softcap = getattr(model.hf.config, "final_logit_softcapping", None)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        ids, mask, pos = left_pad([torch.from_numpy(prompts.tokens[i]) for i in idx], model.tokenizer.pad_token_id)
        roles, _, _ = left_pad([torch.from_numpy(prompts.roles[i].astype(np.int64)) for i in idx], 0)
        ids, mask, pos = ids.to(model.device), mask.to(model.device), pos.to(model.device)
        target = (roles[:, 1:] == ROLE_CODE["assistant"]).to(model.device)  # position t predicts token t+1
        prompt_end = torch.as_tensor(ids.shape[1] - prompts.lengths[idx] + prompts.prompt_len[idx])
        with torch.inference_mode(), steer(model, *interventions, prompt_width=prompt_end):
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, :-1]
            logits = head(hidden[target]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            logp = logits.gather(-1, ids[:, 1:][target].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            per_row = torch.zeros(len(idx), device=logp.device).index_add_(0, target.nonzero()[:, 0], logp)
        out[idx] = (per_row.cpu() / target.sum(1).clamp(min=1).cpu()).numpy()
    return out


def neutral_pairs(limit: int | None = None) -> list[tuple[str, str]]:
    """Neutral reference text for the coherence guard: the aligned usual-style answers."""
    return [(q["question"], q["aligned_usual"]) for q in load_general_questions()[: limit or None]]


def logprobs_under(model: ModelLike, pairs: list[tuple[str, str]], interventions: tuple = (), system_prompt: str | None = None
                   ) -> Float[np.ndarray, " n"]:
    """Mean per-token log-prob of each answer with the interventions applied (at their positions)."""
    return answer_logprobs(model, pairs, system_prompt or DEFAULT_SYSTEM_PROMPT, interventions=interventions)


def coherence_change(model: ModelLike, interventions: Sequence, baseline: np.ndarray, pairs: list[tuple[str, str]],
                     seed: int = 0) -> Estimate:
    """The coherence guard: mean change in log-prob per token of neutral text (`pairs`, whose
    unedited log-probs are `baseline`) under the interventions, with a bootstrap CI.
    No intervention: exactly 0 (nothing is run)."""
    if not interventions:
        return Estimate(0.0, 0.0, 0.0, len(pairs))
    return mean_ci(logprobs_under(model, pairs, tuple(interventions)) - baseline, COHERENCE_BOOT, seed)
