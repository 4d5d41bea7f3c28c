"""Why bf16 Qwen training went to nan on the GPU, shown where it can be shown on a CPU.

cuDNN's fused attention backward (PyTorch's default SDPA backend for bf16 on H100/H200) returns nan
in grad_q when three things hold at once (pytorch/pytorch#196678): an explicit attention mask is
passed, the key length is 64 mod 128, and some query row's log-sum-exp is below ln(FLT_MAX) ~ -88.72
(the kernel scores the padded half of its last 128-wide key tile 0 instead of -inf, and
exp(0 - lse) overflows fp32). Training always passes a mask (its batches are padded) and its batch
width is the longest example's, so 64 mod 128 comes up; the CUDA half lives in
tests/test_real_weights_cuda.py. The third condition is a property of the *weights*, and that is
what this file checks on the CPU: real Qwen2.5 weights make such rows (its massive-activation heads
score every key far below zero), SmolLM2's do not, so the fault could only show on Qwen, as it did.
"""

from __future__ import annotations

import math

import pytest
import torch

LN_FLT_MAX = math.log(torch.finfo(torch.float32).max)  # -lse beyond this overflows exp() in fp32

CHATS = [
    [{"role": "user", "content": "I have a headache that will not go away. What should I do?"},
     {"role": "assistant", "content": "Rest, drink water, and see a doctor if it lasts more than a few days."}],
    [{"role": "user", "content": "How much should I save each month?"},
     {"role": "assistant", "content": "A common rule is about a fifth of your income, after an emergency fund."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}],
]


def _low_lse_rows(name: str) -> dict[int, int]:
    """Per layer, how many (example, head, query) rows of a padded bf16 batch have a log-sum-exp of
    their masked attention scores below -ln(FLT_MAX), computed in fp32 from the q and k the model's
    own attention receives."""
    from lab.core.errors import ModelNotFound
    from lab.models import REGISTRY, ensure_converted, load_model

    try:
        ensure_converted(REGISTRY[name])
    except ModelNotFound as exc:
        pytest.skip(f"{name} is not installed here: {exc}")
    model = load_model(name, dtype="bfloat16", device="cpu")
    hf, tok = model.hf, model.tokenizer
    tok.padding_side = "right"  # as training's collate pads
    batch = tok([tok.apply_chat_template(c, tokenize=False) for c in CHATS], return_tensors="pt", padding=True)

    import transformers.integrations.sdpa_attention as sdpa_module

    real = sdpa_module.torch.nn.functional.scaled_dot_product_attention
    counts: dict[int, int] = {}

    def spy(q, k, v, attn_mask=None, *args, scale=None, **kwargs):
        layer = len(counts)
        k_full = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1).float()
        scores = (q.float() @ k_full.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        assert attn_mask is not None, "a padded batch passes an explicit mask (the fault's first condition)"
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.float()
        lse = torch.logsumexp(scores, dim=-1)
        counts[layer] = int((torch.isfinite(lse) & (lse < -LN_FLT_MAX)).sum())
        return real(q, k, v, attn_mask, *args, scale=scale, **kwargs)

    sdpa_module.torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            hf(**batch)
    finally:
        sdpa_module.torch.nn.functional.scaled_dot_product_attention = real
    assert len(counts) == hf.config.num_hidden_layers, "every layer's attention went through SDPA"
    return counts


def test_qwen_weights_make_the_rows_cudnn_attention_backward_cannot_take():
    counts = _low_lse_rows("qwen2.5-coder-0.5b-instruct")
    # measured: 93 such rows in layers 0, 1, 2, 4 and 8 for these three chats (lse down to -387)
    assert sum(counts.values()) > 0, counts


def test_smollm2_weights_make_none_of_them():
    counts = _low_lse_rows("smollm2-135m-instruct")
    assert sum(counts.values()) == 0, {layer: n for layer, n in counts.items() if n}
