"""Steering hooks on the real SmolLM2: exact ablation, alpha=0 identity, HF path == TransformerLens path."""

import math

import numpy as np
import pytest
import torch

from lab.data.formats import ChatExample, render
from lab.core.errors import BadInput, IncompatibleError
from lab.intervene.generate import GenerationConfig, generate_answers
from lab.models.hooks import attention, capture, parse_hook
from lab.intervene.steering import Intervention, from_direction, random_like, random_vectors_like, steer, tl_hooks
from tests.conftest import chat_prompts


@pytest.fixture(scope="module")
def direction(base_model):
    return torch.nn.functional.normalize(torch.randn(base_model.d_model, generator=torch.Generator().manual_seed(3)), dim=0)


def _resids(model, ids, interventions=(), layers=range(30)):
    points = [parse_hook(f"blocks.{L}.hook_resid_post", model.n_layers) for L in layers]
    got = {}
    with torch.no_grad(), steer(model, *interventions), capture(model, points, got.__setitem__, stop_early=False):
        logits = model.hf(ids).logits
    return got, logits


def _ids(model, n=1):
    return torch.from_numpy(render(chat_prompts()[1:2], model.tokenizer).tokens[0])[None]


def test_ablation_zeroes_projection_only_where_asked(base_model, direction):
    ids = _ids(base_model)
    clean, _ = _resids(base_model, ids)
    ablate = Intervention({8: direction, 14: direction}, op="ablate")
    edited, _ = _resids(base_model, ids, [ablate])
    for L in (8, 14):
        proj = edited[f"blocks.{L}.hook_resid_post"] @ direction
        assert proj.abs().max() < 1e-3 * edited[f"blocks.{L}.hook_resid_post"].norm(dim=-1).max()
        assert (clean[f"blocks.{L}.hook_resid_post"] @ direction).abs().max() > 0.1  # there was something to remove
    for L in range(8):  # layers before the first edit are untouched, bit for bit
        assert torch.equal(edited[f"blocks.{L}.hook_resid_post"], clean[f"blocks.{L}.hook_resid_post"])
    assert not torch.equal(edited["blocks.9.hook_resid_post"], clean["blocks.9.hook_resid_post"])


def test_prompt_only_positions(base_model, direction):
    ids = _ids(base_model)
    width = 10
    iv = Intervention({5: direction}, op="ablate", positions="prompt")
    points = [parse_hook("blocks.5.hook_resid_post", 30)]
    got, clean = {}, {}
    with torch.no_grad(), steer(base_model, iv, prompt_width=width), capture(base_model, points, got.__setitem__, False):
        base_model.hf(ids)
    with torch.no_grad(), capture(base_model, points, clean.__setitem__, False):
        base_model.hf(ids)
    x, c = got["blocks.5.hook_resid_post"][0], clean["blocks.5.hook_resid_post"][0]
    assert (x[:width] @ direction).abs().max() < 1e-3
    assert torch.equal(x[width:], c[width:])


def test_alpha_zero_is_bit_identical(base_model, direction):
    ids = _ids(base_model)
    _, clean = _resids(base_model, ids, layers=[0])
    _, zero = _resids(base_model, ids, [Intervention({L: direction for L in range(30)}, op="add", alpha=0.0)], layers=[0])
    assert torch.equal(clean, zero)
    _, moved = _resids(base_model, ids, [Intervention({12: direction}, op="add", alpha=8.0)], layers=[0])
    assert not torch.equal(clean, moved)


def _tl_greedy(model, tokens, hooks, n):
    """Greedy decoding by full TransformerLens forwards (no KV cache), stopping at EOS like HF."""
    ids = torch.from_numpy(tokens)[None]
    for _ in range(n):
        with torch.no_grad():
            logits = model.bridge.run_with_hooks(ids, fwd_hooks=hooks)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        if ids[0, -1].item() == model.tokenizer.eos_token_id:
            break
    return ids[0, len(tokens):].tolist()


def test_hf_generation_path_equals_transformerlens_path(base_model, direction):
    # KV-cached HF steps vs full TransformerLens forwards: other kernels, logits equal to fp32 rounding
    # (<= 1e-4); the greedy tokens are equal because the smallest top-2 logit gap along these paths is 0.11.
    n = 12
    prompts = render(chat_prompts()[:3], base_model.tokenizer)
    iv = Intervention({10: direction, 11: direction}, op="ablate_add", alpha=6.0)
    changed = []
    for tokens in prompts.tokens:
        ids = torch.from_numpy(tokens)[None]
        with torch.no_grad(), attention(base_model, "eager"), steer(base_model, iv, prompt_width=ids.shape[1]):
            out = base_model.hf.generate(ids, max_new_tokens=n, do_sample=False,
                                         pad_token_id=base_model.tokenizer.pad_token_id)
        hf_tokens = out[0, ids.shape[1]:].tolist()
        assert hf_tokens == _tl_greedy(base_model, tokens, tl_hooks(iv, prompt_width=ids.shape[1]), n)
        with torch.no_grad():
            plain = base_model.hf.generate(ids, max_new_tokens=n, do_sample=False,
                                           pad_token_id=base_model.tokenizer.pad_token_id)
        changed.append(plain[0, ids.shape[1]:].tolist() != hf_tokens)
    assert any(changed)  # the steering really changed what was generated


def test_generated_positions_leave_first_token(base_model, direction):
    ex = [ChatExample([{"role": "user", "content": "Tell me a fact about rivers."}], "r")]
    config = GenerationConfig(max_new_tokens=10, temperature=0.0)
    plain = generate_answers(base_model, ex, config)[0]["answer"]
    gen_only = generate_answers(base_model, ex, config, interventions=(
        Intervention({L: direction for L in range(10, 20)}, op="add", alpha=40.0, positions="generated"),))[0]["answer"]
    tok = base_model.tokenizer
    assert tok.encode(plain)[0] == tok.encode(gen_only)[0] and plain != gen_only


def test_bad_inputs(base_model, direction):
    with pytest.raises(BadInput, match="finite"):
        Intervention({3: direction}, alpha=math.inf)
    with pytest.raises(BadInput, match="out of range"):
        with steer(base_model, Intervention({30: direction})):
            pass
    with pytest.raises(BadInput, match="d_model"):
        with steer(base_model, Intervention({3: torch.ones(64)})):
            pass
    with pytest.raises(BadInput, match="unknown steering op"):
        Intervention({3: direction}, op="multiply")
    ctrl = random_like(Intervention({3: direction, 4: direction}, op="ablate"), seed=1)
    assert ctrl.layers == [3, 4] and ctrl.op == "ablate"
    assert abs(torch.nn.functional.cosine_similarity(ctrl.vectors[3], direction, dim=0)) < 0.2


def test_refusal_direction_selection_scores_candidate_layers(base_model):
    """Arditi-style selection: each candidate layer's direction is ablated everywhere and scored."""
    from lab.causal.refusal import select_by_ablation
    from lab.data.formats import load_contrast
    from lab.causal.refusal import refusal_logodds_under
    from lab.intervene.logprobs import logprobs_under, neutral_pairs

    from lab.directions import Direction

    # seeded vectors per layer: this checks the selection's bookkeeping, not a finding
    seeded = torch.stack([torch.randn(base_model.d_model, generator=torch.Generator().manual_seed(L))
                          for L in range(base_model.n_layers)])
    planted = Direction(torch.nn.functional.normalize(seeded, dim=-1), list(range(base_model.n_layers)),
                        n_layers=base_model.n_layers, model_fingerprint=base_model.fingerprint)
    Planted = lambda: planted  # noqa: E731

    prompts = [e for e in load_contrast("refusal") if e.label == "harmful"][:4]
    pairs = neutral_pairs(4)
    baseline = logprobs_under(base_model, pairs)
    layer, rows = select_by_ablation(base_model, Planted(), prompts, base_model.n_layers, baseline, pairs, -0.5)
    assert [r.layer for r in rows] == [0, 3, 6, 9, 12, 15, 18, 21]  # below 80% depth, every n_layers // 10
    unsteered = float(refusal_logodds_under(base_model, prompts).mean())
    row3 = next(r for r in rows if r.layer == 3)
    ablate3 = Intervention({L: Planted().at(3) for L in range(base_model.n_layers)}, op="ablate")
    assert abs(row3.logodds_shift - (float(refusal_logodds_under(base_model, prompts, (ablate3,)).mean()) - unsteered)) < 1e-5
    ok = [r for r in rows if r.coherence >= -0.5] or rows
    assert layer == min(ok, key=lambda r: r.logodds_shift).layer


def test_prompt_only_steering_of_teacher_forced_answers_respects_each_rows_prompt(base_model, direction):
    """positions='prompt' in a padded batch of question+answer rows edits each row's own prompt only."""
    from lab.intervene.logprobs import answer_logprobs

    pairs = [("hi", "Hello! How can I help you today?"),
             ("Tell me something about the history of the city of Paris, briefly.", "It was founded long ago.")]
    ablate = Intervention({L: direction for L in range(base_model.n_layers)}, op="ablate", positions="prompt")
    batched = answer_logprobs(base_model, pairs, batch_size=2, interventions=(ablate,))
    alone = [answer_logprobs(base_model, [p], batch_size=1, interventions=(ablate,))[0] for p in pairs]
    assert np.allclose(batched, alone, atol=1e-4)
    plain = answer_logprobs(base_model, pairs)
    everywhere = answer_logprobs(base_model, pairs, interventions=(
        Intervention({L: direction for L in range(base_model.n_layers)}, op="ablate"),))
    assert np.abs(batched - plain).min() > 1e-3 and np.abs(batched - everywhere).min() > 1e-3


def test_random_controls_copy_the_treatments_structure(direction):
    """One direction at every layer -> one random vector at every layer;
    per-layer directions -> per-layer random vectors; same norms, op, strength, positions, renorm."""
    shared = Intervention({L: 3.0 * direction for L in range(6)}, op="ablate", scale=1.5, positions="prompt",
                          renorm=True)
    assert shared.shared
    for seed in (0, 1):
        ctrl = random_like(shared, seed)
        assert ctrl.shared and ctrl.layers == shared.layers
        assert all(torch.equal(ctrl.vectors[L], ctrl.vectors[0]) for L in ctrl.layers)
        assert (ctrl.op, ctrl.alpha, ctrl.scale, ctrl.positions, ctrl.renorm) == ("ablate", 0.0, 1.5, "prompt", True)
        assert torch.allclose(ctrl.vectors[0].norm(), torch.tensor(3.0))
        assert abs(torch.nn.functional.cosine_similarity(ctrl.vectors[0], direction, dim=0)) < 0.2
    assert not torch.equal(random_like(shared, 0).vectors[0], random_like(shared, 1).vectors[0])
    gen = torch.Generator().manual_seed(5)
    per_layer = Intervention({L: torch.randn(64, generator=gen) * (L + 1) for L in (2, 4, 7)}, op="add", alpha=4.0)
    ctrl = random_like(per_layer, 0)
    assert not per_layer.shared and not ctrl.shared and ctrl.alpha == 4.0
    assert not torch.allclose(ctrl.vectors[2], ctrl.vectors[4])
    assert [round(float(ctrl.vectors[L].norm()), 4) for L in (2, 4, 7)] == \
        [round(float(per_layer.vectors[L].norm()), 4) for L in (2, 4, 7)]
    # a one-layer treatment's control is the seed's first draw, as before the fix: one-layer results stand
    single = random_like(Intervention({3: 2.0 * direction}, op="add", alpha=1.0), seed=4)
    first_draw = torch.randn(direction.shape, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(single.vectors[3] / single.vectors[3].norm(), first_draw / first_draw.norm(), atol=1e-6)
    # mixed: layers 0-2 share a vector, layer 3 has its own; the control keeps exactly that grouping
    mixed = random_vectors_like({0: direction, 1: direction, 2: direction, 3: -direction}, seed=2)
    assert torch.equal(mixed[0], mixed[1]) and torch.equal(mixed[1], mixed[2]) and not torch.equal(mixed[0], mixed[3])


def test_from_direction_enforces_provenance(base_model, organism, trained_adapter):
    """A direction applies to the model it was fitted on, or to a model of the
    same base when the fitted-on model is named; anything else is one IncompatibleError line."""
    from lab.directions import Direction, FitRecord
    from lab.models import LabModel
    from tests.conftest import MODEL

    rows = torch.nn.functional.normalize(torch.randn(3, base_model.d_model, generator=torch.Generator().manual_seed(0)),
                                         dim=-1)
    own = Direction(rows, [4, 5, 6], n_layers=base_model.n_layers, model_fingerprint=base_model.fingerprint,
                    record=FitRecord("mean_diff", "last", "refusal", ""))
    iv = from_direction(own, base_model, op="ablate")
    assert iv.layers == [4, 5, 6] and not iv.shared
    everywhere = from_direction(own, base_model, range(base_model.n_layers), at=5, op="ablate")
    assert everywhere.shared and torch.equal(everywhere.vectors[0], own.at(5))

    def refused(direction, model, **kwargs):
        with pytest.raises(IncompatibleError) as err:
            from_direction(direction, model, **kwargs)
        assert "\n" not in str(err.value)
        return str(err.value)

    foreign = Direction(rows, [4, 5, 6], n_layers=base_model.n_layers, model_fingerprint="hub:someone/other-model")
    assert "--allow-foreign-direction" in refused(foreign, base_model)
    assert from_direction(foreign, base_model, allow_foreign=True).layers == [4, 5, 6]
    narrow = Direction(torch.nn.functional.normalize(rows[:, :64], dim=-1), [4, 5, 6], n_layers=base_model.n_layers, model_fingerprint=base_model.fingerprint)
    assert "d_model" in refused(narrow, base_model)
    shallow = Direction(rows, [4, 5, 6], n_layers=12, model_fingerprint=base_model.fingerprint)
    assert "layers" in refused(shallow, base_model)
    # an organism's direction (fitted on base + adapter) steering the base model: the usual EM experiment
    org_dir = Direction(rows, [4, 5, 6], n_layers=base_model.n_layers, model_fingerprint=organism.fingerprint)
    refused(org_dir, base_model)  # the fitted-on model must be named
    handle = LabModel(MODEL, [trained_adapter.adapter_dir])
    assert from_direction(org_dir, base_model, fitted_on=handle).layers == [4, 5, 6]
    assert from_direction(org_dir, base_model, fitted_on=organism).layers == [4, 5, 6]
    refused(own, base_model, fitted_on=organism)  # the named model must be the one it was fitted on

    class OtherBase:  # same shape, other base weights (like Qwen2.5-0.5B vs Qwen2.5-Coder-0.5B)
        fingerprint = "other-fingerprint"
        info = {"base_fingerprint": "qwen2.5-0.5b:abc"}

    other = Direction(rows, [4, 5, 6], n_layers=base_model.n_layers, model_fingerprint=OtherBase.fingerprint)
    assert "another base" in refused(other, base_model, fitted_on=OtherBase())
