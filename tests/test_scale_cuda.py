"""Sharding on real GPUs: a small random Llama split over two GPUs (`--device-map cuda:0,cuda:1`)
computes what the same weights compute on one GPU, on every path: logits, activation caching
(tokens and pooled), steering, teacher-forced scoring, generation, LoRA training, TransformerLens
hook names. Skipped without CUDA (two GPUs for the sharded tests); run on the lent machines."""

import numpy as np
import pytest
import torch

from lab.data.formats import ChatExample, render

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


def _tokenizer() -> str:
    """SmolLM2's tokenizer: a folder (EMLAB_TOKENIZER), else the registered model's (installed in the
    store on the GPU machine); the tests skip, not error, where neither is present."""
    import os

    from lab.core.errors import ModelNotFound
    from lab.models import load_tokenizer

    source = os.environ.get("EMLAB_TOKENIZER", "smollm2-135m-instruct")
    try:
        load_tokenizer(source)
    except (ModelNotFound, OSError) as exc:
        pytest.skip(f"no SmolLM2 tokenizer here ({type(exc).__name__}: {str(exc)[:80]})")
    return source


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from lab.models import random_folder

    tokenizer = _tokenizer()
    path = tmp_path_factory.mktemp("tiny") / "model"
    random_folder("tiny-llama", path, tokenizer, "float32", device="cpu")
    return str(path)


# Layers 0-1 with the embedding and head on GPU 0, layers 2-3 on GPU 1. (The planner balances bytes,
# and in this tiny model the embedding outweighs every layer, so it would put all four on GPU 1.)
SPLIT = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 0, "lm_head": 0,
         "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1, "model.layers.3": 1}


def _pair(folder):
    from lab.models import LabModel, ModelPool

    pool = ModelPool()
    one = LabModel(folder, dtype="float32", device="cuda:0", pool=pool)
    split = LabModel(folder, dtype="float32", device_map=SPLIT, pool=pool)
    return pool, one, split


@two_gpus
def test_device_map_string_spreads_the_model_over_both_gpus(folder):
    from lab.models import LabModel

    model = LabModel(folder, dtype="float32", device_map="cuda:0,cuda:1")
    assert {str(p.device) for p in model.hf.parameters()} == {"cuda:0", "cuda:1"}
    assert str(model.device) == "cuda:0" and str(model.hf.get_input_embeddings().weight.device) == "cuda:0"


def _examples():
    return [ChatExample([{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                         {"role": "assistant", "content": f"It is {2 * i}."}], f"e{i}") for i in range(10)]


def test_auto_dtype_is_bf16_on_cuda(folder):
    from lab.models import LabModel

    model = LabModel(folder, device="cuda")
    assert model.dtype == torch.bfloat16 and "bfloat16" in str(model.dtype)


@two_gpus
def test_split_model_places_layers_on_both_gpus_and_matches_one_gpu(folder, tmp_path):
    from lab.cache import build_cache
    from lab.intervene.generate import GenerationConfig, generate_answers
    from lab.intervene.logprobs import answer_logprobs
    from lab.intervene.steering import Intervention, steer

    pool, one, split = _pair(folder)
    assert [str(d) for d in split.devices] == ["cuda:0", "cuda:1"] and split.fingerprint == one.fingerprint
    prompts = render(_examples(), one.tokenizer)
    x = torch.from_numpy(prompts.tokens[0])[None].to("cuda:0")
    with torch.no_grad():
        assert (split.hf(x).logits - one.hf(x).logits).abs().max() <= 1e-4
        iv = Intervention({1: torch.randn(256), 3: torch.randn(256)}, op="ablate_add", alpha=3.0, positions="all")
        with steer(split, iv):
            a = split.hf(x).logits
        with steer(one, iv):
            b = one.hf(x).logits
        assert (a - b).abs().max() <= 1e-4
    for mode in ("tokens", "pooled"):
        c1 = build_cache(one, prompts, tmp_path / f"one-{mode}", mode=mode, batch_size=3)
        c2 = build_cache(split, prompts, tmp_path / f"split-{mode}", mode=mode, batch_size=3)
        for layer in range(one.n_layers):
            f1, f2 = c1.features(layer, "mean_response"), c2.features(layer, "mean_response")
            assert np.abs(f1 - f2).max() <= 1e-4 * max(1.0, np.abs(f1).max()), (mode, layer)
    pairs = [(e.messages[0]["content"], e.messages[1]["content"]) for e in _examples()]
    assert np.abs(answer_logprobs(split, pairs) - answer_logprobs(one, pairs)).max() <= 1e-4
    gen = GenerationConfig(max_new_tokens=8, temperature=0.0, batch_size=4)
    qs = [ChatExample(e.messages[:1], e.id) for e in _examples()]
    assert [r["answer"] for r in generate_answers(split, qs, gen)] == [r["answer"] for r in generate_answers(one, qs, gen)]
    assert pool.loads == 2


@two_gpus
def test_lora_training_and_tl_hooks_on_a_split_model(folder, tmp_path):
    from lab.training.lora import TrainConfig, train_lora

    pool, one, split = _pair(folder)
    cfg = TrainConfig(batch_size=2, max_steps=2, checkpoints_first_epoch=1, lr=1e-2, max_length=64)
    r1 = train_lora(one.for_training(), _examples(), tmp_path / "one", cfg)
    r2 = train_lora(split.for_training(), _examples(), tmp_path / "split", cfg)
    assert np.allclose(r1.losses, r2.losses, rtol=1e-3), (r1.losses, r2.losses)
    organism = split.with_adapters([r2.adapter_dir])
    x = torch.from_numpy(render(_examples()[:1], one.tokenizer).tokens[0])[None].to("cuda:0")
    with torch.no_grad():
        hf = organism.hf(x, output_hidden_states=True)
        _, cache = organism.bridge.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
        base = split.hf(x).logits
    assert (hf.logits - base).abs().max() > 1e-4  # the adapter is live on the split model
    for layer in range(split.n_layers - 1):
        ref = hf.hidden_states[layer + 1]
        got = cache[f"blocks.{layer}.hook_resid_post"].to(ref.device)
        assert (got - ref).abs().max() <= 1e-3 * ref.abs().max(), layer


@two_gpus
def test_sharded_random_build_matches_plan(tmp_path):
    from lab.models import ModelPool, random_sharded

    with ModelPool() as pool:
        model = random_sharded("tiny-llama", "auto", _tokenizer(), "bfloat16", pool=pool,
                               folder=tmp_path / "m")
        # every GPU holds part of the model (in this tiny shape the embedding outweighs the layers,
        # so the byte-balanced plan gives GPU 0 the embedding and head, the others the layers)
        gpus = {f"cuda:{i}" for i in range(torch.cuda.device_count())}
        assert {str(p.device) for p in model.hf.parameters()} == gpus
        x = torch.tensor([[1, 2, 3, 4]], device=model.device)
        with torch.no_grad():
            assert torch.isfinite(model.hf(x).logits.float()).all()
        assert pool.loads == 0  # adopted, not loaded
