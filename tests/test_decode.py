"""Steering positions under every cache, and the fast decode path == HF generate (real SmolLM2, fp32)."""

import pytest
import torch

import lab.intervene.steering as steering
from lab.data.formats import ChatExample, load_contrast, render
from lab.intervene.decode import Sampling, fast_generate, hf_generate
from lab.core.errors import IncompatibleError
from lab.intervene.generate import GenerationConfig, generate_answers
from lab.models.hooks import left_pad
from lab.intervene.steering import Intervention, steer
from tests.conftest import intervention_conditions

CONDITIONS = ("none", "add", "ablate", "ablate_generated", "add_generated")  # see intervention_conditions


@pytest.fixture(scope="module")
def direction(base_model):
    return torch.nn.functional.normalize(torch.randn(base_model.d_model, generator=torch.Generator().manual_seed(3)), dim=0)


@pytest.fixture(scope="module")
def batch(base_model):
    """Six real prompts of different lengths, left-padded."""
    prompts = render(load_contrast("refusal")[:6], base_model.tokenizer)
    ids, mask, _ = left_pad([torch.from_numpy(t) for t in prompts.tokens], base_model.tokenizer.pad_token_id)
    assert (mask == 0).any()  # some rows are padded
    return ids, mask


def _record_positions(monkeypatch):
    seen = []
    real = steering._absolute_positions

    def spy(tracker, seq, device):
        out = real(tracker, seq, device)
        seen.append(out.tolist())
        return out
    monkeypatch.setattr(steering, "_absolute_positions", spy)
    return seen


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_hooks_see_absolute_positions_in_every_decode_step(base_model, direction, batch, monkeypatch, cache):
    ids, mask = batch
    seen = _record_positions(monkeypatch)
    iv = Intervention({4: direction}, op="add", alpha=1.0, positions="generated")
    extra = {"cache_implementation": "static", "disable_compile": True} if cache == "static" else {}
    hf_generate(base_model, ids, mask, Sampling(5, min_new_tokens=5), (iv,), **extra)
    p = ids.shape[1]
    assert seen == [list(range(p))] + [[p + k] for k in range(4)]


def test_fast_path_hooks_see_absolute_positions(base_model, direction, batch, monkeypatch):
    ids, mask = batch
    seen = _record_positions(monkeypatch)
    iv = Intervention({4: direction}, op="add", alpha=1.0, positions="generated")
    fast_generate(base_model, ids, mask, Sampling(5, min_new_tokens=5), (iv,))
    p = ids.shape[1]
    assert seen == [list(range(p))] + [[p + k] for k in range(4)]


def test_teacher_forced_forward_positions_start_at_zero(base_model, direction, batch, monkeypatch):
    ids, mask = batch
    seen = _record_positions(monkeypatch)
    iv = Intervention({4: direction}, op="add", alpha=1.0, positions="prompt")
    with torch.no_grad(), steer(base_model, iv, prompt_width=3):
        base_model.hf(ids[:, :7], attention_mask=mask[:, :7])
        base_model.hf.model(input_ids=ids[:, :5])  # the decoder stack called directly (lab.em.judge_free does)
    assert seen == [list(range(7)), list(range(5))]


def test_an_unrecognised_cache_fails_loudly(base_model, direction, batch, monkeypatch):
    """A cache passed under a keyword we did not look for (a past defect) cannot recur silently."""
    ids, mask = batch
    monkeypatch.setattr(steering, "_find_cache", lambda args, kwargs: None)
    iv = Intervention({4: direction}, op="add", alpha=1.0, positions="generated")
    with pytest.raises(IncompatibleError, match="cannot tell token positions"):
        hf_generate(base_model, ids, mask, Sampling(3), (iv,))
    plain = Intervention({4: direction}, op="add", alpha=1.0)  # position-free edits need no tracking
    assert hf_generate(base_model, ids, mask, Sampling(2), (plain,)).shape == (len(ids), 2)




# Tokens per path in the equality test below: every decode step after the first runs the same cached-step
# code, so 8 steps test what 16 did at half the cost (it is the suite's slowest generation test); the
# logit gap quoted there was measured over 16 tokens, and the first 8 are a subset of those paths.
NEW_TOKENS = 8


def test_fast_greedy_equals_hf_generate_under_interventions(base_model, direction, batch):
    # The two paths run other kernels (cache layout, shapes), so their logits differ by fp32 rounding:
    # at most 1e-4 measured across batch, padding, attention and CPU kernel choices. Greedy tokens are
    # still equal on every machine because the smallest top-1 minus top-2 logit gap along these paths
    # (fixed inputs and weights) is 5e-3, 50x that: a token can only flip at a near-tie.
    ids, mask = batch
    eos = base_model.tokenizer.eos_token_id
    outs = {}
    for name, ivs in intervention_conditions(base_model, direction, *CONDITIONS).items():
        reference = hf_generate(base_model, ids, mask, Sampling(NEW_TOKENS), ivs, eos_id=eos)
        fast = fast_generate(base_model, ids, mask, Sampling(NEW_TOKENS), ivs, eos_id=eos)
        assert torch.equal(fast, reference), name
        if name in ("none", "ablate_generated"):  # the CUDA path's padded shapes: 6 rows -> 8, width -> 64
            bucketed = fast_generate(base_model, ids, mask, Sampling(NEW_TOKENS), ivs, eos_id=eos, bucket=True)
            assert torch.equal(bucketed, reference), name
        outs[name] = reference
    for name in ("add", "ablate", "add_generated"):  # the interventions really changed the text
        assert not torch.equal(outs[name], outs["none"]), name
    assert torch.equal(outs["add_generated"][:, 0], outs["none"][:, 0])  # first token comes from the prompt


def test_fast_path_stops_where_generate_stops(base_model):
    """Every row ends with EOS before max_new_tokens: same length and pad filling as generate."""
    ex = [ChatExample([{"role": "user", "content": q}], str(i)) for i, q in enumerate(["hi", "Say yes."])]
    prompts = render(ex, base_model.tokenizer)
    ids, mask, _ = left_pad([torch.from_numpy(t) for t in prompts.tokens], base_model.tokenizer.pad_token_id)
    eos = base_model.tokenizer.eos_token_id
    reference = hf_generate(base_model, ids, mask, Sampling(60), eos_id=eos)
    fast = fast_generate(base_model, ids, mask, Sampling(60), eos_id=eos, eos_every=7)
    assert reference.shape[1] < 60 and (reference == eos).any(dim=1).all()
    assert torch.equal(fast, reference)


def test_seeded_sampling_is_reproducible_and_matches_generate(base_model, direction, batch):
    ids, mask = batch
    sampling = Sampling(12, do_sample=True, temperature=1.0, top_p=0.9)
    ivs = (Intervention({8: direction}, op="ablate", positions="generated"),)
    draws = []
    for run in (fast_generate, fast_generate, hf_generate):
        torch.manual_seed(11)
        draws.append(run(base_model, ids, mask, sampling, ivs, eos_id=base_model.tokenizer.eos_token_id))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    torch.manual_seed(12)
    assert not torch.equal(draws[0], fast_generate(base_model, ids, mask, sampling, ivs))


def test_generate_answers_same_text_on_both_paths(base_model, direction):
    ex = [ChatExample([{"role": "user", "content": "Tell me a fact about rivers."}], "r"),
          ChatExample([{"role": "user", "content": "hi"}], "h")]
    ivs = (Intervention({L: direction for L in range(10, 20)}, op="add", alpha=40.0, positions="generated"),)
    rows = {d: generate_answers(base_model, ex, GenerationConfig(max_new_tokens=10, temperature=0.0, decode=d),
                                interventions=ivs) for d in ("hf", "fast")}
    assert [r["answer"] for r in rows["hf"]] == [r["answer"] for r in rows["fast"]]
    assert [r["decode"] for r in rows["fast"]] == ["fast", "fast"]
    assert rows["hf"][0]["settings_hash"] == rows["fast"][0]["settings_hash"]  # files resume across paths


class _Tiny:
    """A random-weight Llama (fp32) with what lab.intervene.decode and lab.intervene.steering use of a LabModel."""

    def __init__(self, device):
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=512,
                             attn_implementation="sdpa")
        torch.manual_seed(0)
        self.hf = LlamaForCausalLM(config).to(device).eval()
        self.tokenizer = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
        self.device, self.dtype, self.d_model, self.n_layers = torch.device(device), torch.float32, 256, 4

    def decoder_layers(self):
        return self.hf.model.layers

    def check_layer(self, layer):
        return layer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_greedy_equals_hf_generate():
    """On the GPU in fp32 (bf16 random weights give near-tied logits): captured graph == generate."""
    model = _Tiny("cuda")
    gen = torch.Generator().manual_seed(1)
    lengths = [9, 5, 12]
    ids, mask, _ = left_pad([torch.randint(2, 1000, (n,), generator=gen) for n in lengths], 0)
    ids, mask = ids.cuda(), mask.cuda()
    v = torch.randn(256, generator=gen)
    for ivs in [(), (Intervention({1: v, 2: v}, op="add", alpha=2.0),),
                (Intervention({L: v for L in range(4)}, op="ablate", positions="generated"),)]:
        reference = hf_generate(model, ids, mask, Sampling(40, min_new_tokens=40), ivs, eos_id=1)
        for _ in range(2):  # the second call replays the graph captured by the first
            fast = fast_generate(model, ids, mask, Sampling(40, min_new_tokens=40), ivs, eos_id=1)
            assert torch.equal(fast, reference)


def test_fast_path_with_eager_attention(base_model, batch):
    from lab.models.hooks import attention

    ids, mask = batch
    with attention(base_model, "eager"):  # the additive float mask instead of sdpa's boolean one
        reference = hf_generate(base_model, ids[:3], mask[:3], Sampling(8))
        assert torch.equal(fast_generate(base_model, ids[:3], mask[:3], Sampling(8)), reference)


def test_tl_hooks_refuse_a_cached_decode_step(base_model, direction):
    """The TransformerLens path numbers positions along the hook's sequence axis: whole sequences
    are right, a one-token KV-cached step with a position-dependent edit must not pass as position 0."""
    from lab.intervene.steering import tl_hooks

    [(name, fn)] = tl_hooks(Intervention({3: direction}, op="ablate", positions="generated"), prompt_width=10)
    whole = torch.randn(1, 12, base_model.d_model)
    edited = fn(whole, None)
    assert name == "blocks.3.hook_resid_post" and torch.equal(edited[:, :10], whole[:, :10])
    assert (edited[0, 10:] @ direction).abs().max() < 1e-4
    with pytest.raises(IncompatibleError, match="whole-sequence"):
        fn(torch.randn(1, 1, base_model.d_model), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.xfail(strict=True, reason=(
    "measured on an H200, 2026-11-30: in bf16 the fast path gives 0.542 of HF generate's greedy tokens, first "
    "mismatch per prompt at [10, 17, 24, 16, none, 0] of 32 (a near-tie flips, then the continuations differ); "
    "fp32 is exact under none/add/ablate")))])
def test_cuda_fast_greedy_equals_hf_generate_on_real_weights(dtype):
    """Real SmolLM2 on the GPU: the fast path (static cache, captured graph, bucketed shapes) gives
    generate's greedy tokens with no intervention, with add and with ablate. In bf16 the two paths
    run different kernels (shapes differ), so a near-tie may flip: a failure says how many tokens agree."""
    from lab.core.errors import ModelNotFound
    from lab.models import load_model

    try:
        model = load_model("smollm2-135m-instruct", dtype=dtype, device="cuda")
        model.hf
    except ModelNotFound as exc:
        pytest.skip(f"SmolLM2 weights not installed here: {exc}")
    direction = torch.nn.functional.normalize(torch.randn(model.d_model, generator=torch.Generator().manual_seed(3)), dim=0)
    prompts = render(load_contrast("refusal")[:6], model.tokenizer)
    ids, mask, _ = left_pad([torch.from_numpy(t) for t in prompts.tokens], model.tokenizer.pad_token_id)
    ids, mask = ids.cuda(), mask.cuda()
    eos = model.tokenizer.eos_token_id
    for name, ivs in intervention_conditions(model, direction, *CONDITIONS).items():
        if name not in ("none", "add", "ablate"):
            continue
        reference = hf_generate(model, ids, mask, Sampling(32), ivs, eos_id=eos)
        for _ in range(2):  # the second call replays the graph captured by the first
            fast = fast_generate(model, ids, mask, Sampling(32), ivs, eos_id=eos)
            n = min(fast.shape[1], reference.shape[1])
            same = fast[:, :n] == reference[:, :n]
            agree = same.float().mean().item()
            first = [int(row.logical_not().nonzero()[0]) if not row.all() else n for row in same]  # first mismatch
            assert torch.equal(fast, reference), f"{dtype} {name}: shapes {tuple(fast.shape)} vs " \
                                                 f"{tuple(reference.shape)}, {agree:.3f} of tokens agree, " \
                                                 f"first mismatch per prompt at {first} of {n}"


@pytest.mark.parametrize("path", ["fast", "hf"])
def test_nan_logits_raise_one_clear_error_instead_of_a_device_assert(base_model, batch, path):
    """Diverged weights once reached sampling on a GPU, where `torch.multinomial` on nan probabilities is
    a device-side assert that kills the process's CUDA context. Both paths now sample nothing from
    non-finite rows and raise `NonFiniteLogits` naming the first bad row and step. Rows 1 and 4 get a
    nan final norm from the third step on (the prefill is step 0)."""
    from lab.core.errors import NonFiniteLogits

    ids, mask = batch
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] >= 3:
            output = output.clone()
            output[[1, 4]] = float("nan")
        return output

    handle = base_model.hf.model.norm.register_forward_hook(poison)
    run = fast_generate if path == "fast" else hf_generate
    try:
        with pytest.raises(NonFiniteLogits, match=r"nan/inf logits in \d+ row-steps of 6 rows \(first at row 1, step 2\)"):
            run(base_model, ids, mask, Sampling(8, do_sample=True, temperature=1.0), eos_id=None)
    finally:
        handle.remove()


def test_nan_logits_stop_the_continuous_sampler_before_any_answer_leaves(base_model, tmp_path):
    """Gumbel-max would pick a nan token silently: the continuous path raises before writing answers."""
    from lab.core.errors import NonFiniteLogits

    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    examples = [ChatExample([{"role": "user", "content": q}], str(i)) for i, q in enumerate(["hi", "Name a colour."])]
    handle = base_model.hf.model.norm.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteLogits, match="nan/inf logits"):
            generate_answers(base_model, examples, GenerationConfig(max_new_tokens=8, samples=2, decode="continuous"),
                             out_path=tmp_path / "a.jsonl")
    finally:
        handle.remove()
    assert not (tmp_path / "a.jsonl").exists() or not (tmp_path / "a.jsonl").read_text().strip()
