"""The same cache on CPU and CUDA agrees within dtype tolerance (skipped without a GPU).

Runs on the lent GPU machine: a small random-weight Llama (no weights need to travel).
"""

import numpy as np
import pytest
import torch

from lab.cache import build_cache
from lab.data.formats import PromptSet
from lab.models import LoadedModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tiny(device: str, tokenizer) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512,
                         attn_implementation="sdpa")
    hf = LlamaForCausalLM(config).eval().to(device)
    return LoadedModel("tiny", hf, tokenizer, "tiny-fp", torch.float32, torch.device(device), info={"base_fingerprint": "t"})


class _Tok:
    pad_token_id = 0


def _prompts(n=24):
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 80, size=n)
    tokens = [rng.integers(1, 1024, size=L) for L in lengths]
    roles = [np.where(np.arange(L) < L // 2, 2, 3).astype(np.int8) for L in lengths]
    return PromptSet([f"p{i}" for i in range(n)], tokens, roles, lengths // 2, ["a", "b"] * (n // 2), [""] * n, "",
                     "t", [{} for _ in range(n)])


@pytest.mark.parametrize("storage, tol", [("float32", 1e-4), ("bfloat16", 2e-2)])
def test_cuda_cache_matches_cpu(tmp_path, storage, tol):
    prompts = _prompts()
    cpu = build_cache(_tiny("cpu", _Tok()), prompts, tmp_path / "cpu", storage_dtype=storage, batch_size=5)
    gpu = build_cache(_tiny("cuda", _Tok()), prompts, tmp_path / "gpu", storage_dtype=storage, batch_size=5)
    for layer in range(6):
        for i in range(len(prompts)):
            a, b = cpu.token_acts(layer, i), gpu.token_acts(layer, i)
            scale = np.abs(a).max()
            assert np.abs(a - b).max() <= tol * scale, (layer, i)
        for pooling in ("last", "mean_prompt", "mean_response"):
            a, b = cpu.features(layer, pooling), gpu.features(layer, pooling)
            assert np.abs(a - b).max() <= tol * np.abs(a).max()
    pooled_cpu = build_cache(_tiny("cpu", _Tok()), prompts, tmp_path / "cpu", storage_dtype=storage, mode="pooled")
    pooled_gpu = build_cache(_tiny("cuda", _Tok()), prompts, tmp_path / "gpu", storage_dtype=storage, mode="pooled")
    for pooling in ("last", "mean_prompt", "mean_response", "first_k"):
        a, b = pooled_cpu.features(3, pooling), pooled_gpu.features(3, pooling)
        assert np.abs(a - b).max() <= tol * np.abs(a).max()
