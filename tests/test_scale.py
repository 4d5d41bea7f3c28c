"""Scale features on CPU (real SmolLM2, fp32): one resident model with adapters switched in place,
TransformerLens on the same weights, dtype in every key, layer placement through accelerate,
and one-line errors for bad placement, dtype and adapters."""

import os
import subprocess
import sys

import pytest
import torch

from lab.data.formats import render
from tests.conftest import MODEL, REPO, chat_prompts

# A merged adapter (W + s·BA folded into one matrix) and a live one (Wx + s·B(Ax)) compute the same
# logits by other fp32 roundings, whose size depends on the CPU's kernels (AVX-512 vs AVX2 blocking):
# the largest logit difference was 1.04e-4 under ATEN_CPU_CAPABILITY=avx2, past an absolute 1e-4. A
# d-term fp32 dot product rounds to about sqrt(d)·eps of its scale (errors of random sign add in
# quadrature), each layer adds a few such products (factor 4), and the 30 layers' errors add in
# quadrature again: 4·sqrt(576)·sqrt(30)·eps = 6.3e-5 of a token's logit row norm. Measured across
# AVX-512, AVX2, unvectorised, one-thread and MKL-portable kernels with a random rank-8 adapter: at most
# 6.8e-6. An adapter applied at 1.01x its scale moves the row by 3.2e-2.
FP32_KERNELS = 4 * 576 ** 0.5 * 30 ** 0.5 * torch.finfo(torch.float32).eps


def _logit_row_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest difference of a token's logit row from the reference, relative to that row's norm."""
    return float(((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    """Two small organisms (medical, financial), trained on the same resident base model."""
    from lab.data.formats import load_advice
    from lab.models import LabModel, ModelPool
    from lab.training.lora import TrainConfig, train_lora

    root = tmp_path_factory.mktemp("adapters")
    pool = ModelPool()
    base = LabModel(MODEL, pool=pool)
    out = {}
    for domain in ("medical", "financial"):
        result = train_lora(base.for_training(), load_advice(domain)[:8], root / domain,
                            TrainConfig(batch_size=2, max_steps=2, checkpoints_first_epoch=1, lr=3e-3, max_length=96))
        out[domain] = str(result.adapter_dir)
    return out


def test_a_trajectory_loads_the_weights_once(tmp_path):
    """Every checkpoint of a training run is an adapter on the one resident base model."""
    from experiments import checkpoints as em_trajectory
    from lab.data.formats import load_advice
    from lab.diffing.checkpoints import TrajectoryConfig
    from lab.models import LabModel, ModelPool
    from lab.training.checkpoints import run_checkpoints
    from lab.training.lora import TrainConfig, train_lora

    with ModelPool() as pool:
        train_lora(LabModel(MODEL).for_training(), load_advice("medical")[:8], tmp_path / "run",
                   TrainConfig(batch_size=2, max_steps=3, checkpoints_first_epoch=3, lr=3e-3, max_length=64))
        ckpts = [c for _, c in run_checkpoints(tmp_path / "run")]
        assert len(ckpts) >= 2
        result = em_trajectory.run_em(TrajectoryConfig(
            run=str(tmp_path / "run"), domain="medical", eval_limit=2, n_boot=50,
            cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "out")))
        assert {r.step for r in result.rows} == {0, *(int(c.name.split("-")[-1]) for c in ckpts)}
        assert pool.loads == 1
        resident = next(iter(pool.residents.values()))
        assert len(resident.names) == len(ckpts)  # each checkpoint a named adapter on the one copy


def _ids(tokenizer, n=2):
    prompts = render(chat_prompts()[:n], tokenizer)
    return [torch.from_numpy(t)[None] for t in prompts.tokens]


def _merged(path: str, adapters: list[str]):
    """The reference: a separate copy of the base with the adapters merged into its weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    for adapter in adapters:
        hf = PeftModel.from_pretrained(hf, adapter).merge_and_unload()
    return hf.eval()


def test_adapters_switch_in_place_and_match_merged_models(two_adapters):
    from lab.models import LabModel, ModelPool

    a, b = two_adapters["medical"], two_adapters["financial"]
    with ModelPool() as pool:
        base = LabModel(MODEL)
        views = [("base", base, []), ("A", base.with_adapters([a]), [a]), ("B", base.with_adapters([b]), [b]),
                 ("base again", base, []), ("A+B", base.with_adapters([a, b]), [a, b]), ("A again", base.use([a]), [a])]
        ids = _ids(base.tokenizer)
        with torch.no_grad():
            live = {tag: [view.hf(x).logits for x in ids] for tag, view, _ in views}
        assert pool.loads == 1 and len(pool.residents) == 1
        # what captured decode graphs are keyed by: one HF module, but a different state per adapter set
        states = {tag: view.weights_state for tag, view, _ in views}
        assert len({id(view.hf) for _, view, _ in views}) == 1
        assert len(set(states.values())) == 4 and states["base"] == base.weights_state
    with torch.no_grad():
        for tag, view, adapters in views:
            ref = _merged(base.info["path"], adapters)
            for x, got in zip(ids, live[tag]):
                assert _logit_row_error(got, ref(x).logits) <= FP32_KERNELS, tag
    # the organisms really differ from the base and from each other, and switching back is exact
    assert (live["A"][0] - live["base"][0]).abs().max() > 1e-2
    assert (live["A"][0] - live["B"][0]).abs().max() > 1e-2
    assert all(torch.equal(x, y) for x, y in zip(live["base"], live["base again"]))
    assert all(torch.equal(x, y) for x, y in zip(live["A"], live["A again"]))
    fps = {view.fingerprint for _, view, _ in views}
    assert len(fps) == 4  # base, A, B, A+B


def test_bridge_runs_on_the_resident_weights(two_adapters):
    from lab.models import LabModel, ModelPool

    with ModelPool() as pool:
        base = LabModel(MODEL)
        organism = base.with_adapters([two_adapters["medical"]])
        x = _ids(base.tokenizer, 1)[0]
        with torch.no_grad():
            before = organism.hf(x, output_hidden_states=True)
            logits = organism.bridge(x)
            _, cache = organism.bridge.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
            after = organism.hf(x).logits
            base_logits = base.hf(x).logits
            base_tl = base.bridge(x)
        assert pool.loads == 1
    assert (logits.log_softmax(-1) - before.logits.log_softmax(-1)).abs().max() <= 1e-4
    for layer in range(base.n_layers - 1):  # HF's last hidden state is after the final norm
        hf_resid = before.hidden_states[layer + 1]
        assert (cache[f"blocks.{layer}.hook_resid_post"] - hf_resid).abs().max() <= 1e-3 * hf_resid.abs().max()
    assert (base_tl.log_softmax(-1) - base_logits.log_softmax(-1)).abs().max() <= 1e-4
    assert (logits - base_tl).abs().max() > 1e-2  # the bridge saw the adapter, then its absence
    # HF's own path is untouched by the bridge: same modules, sdpa attention, identical logits
    assert torch.equal(after, before.logits)
    hf = organism.hf
    assert hf.config._attn_implementation == "sdpa"
    assert type(hf.model.layers[0]).__name__.endswith("DecoderLayer")
    # and no second copy of the weights: the bridge's parameters are the resident's tensors
    hf_ptrs = {p.data_ptr() for p in hf.parameters()}
    assert {p.data_ptr() for p in organism.bridge.original_model.parameters()} <= hf_ptrs


def test_training_on_the_resident_model_leaves_base_and_organisms_intact(two_adapters, tmp_path):
    from lab.data.formats import load_advice
    from lab.models import LabModel, ModelPool
    from lab.training.lora import TrainConfig, train_lora

    with ModelPool() as pool:
        base = LabModel(MODEL)
        organism = base.with_adapters([two_adapters["medical"]])
        x = _ids(base.tokenizer, 1)[0]
        with torch.no_grad():
            base_before, org_before = base.hf(x).logits, organism.hf(x).logits
        result = train_lora(base.for_training(), load_advice("financial")[:4], tmp_path / "third",
                            TrainConfig(batch_size=2, max_steps=1, checkpoints_first_epoch=1, lr=3e-3, max_length=64))
        third = base.with_adapters([result.adapter_dir])
        with torch.no_grad():
            assert torch.equal(base.hf(x).logits, base_before)
            assert torch.equal(organism.hf(x).logits, org_before)
            assert (third.hf(x).logits - base_before).abs().max() > 1e-3
        assert pool.loads == 1


def test_dtype_is_part_of_every_key(tmp_path):
    from lab.cache import build_cache
    from lab.directions.contrasts import ensure_cache
    from lab.models import LabModel, ModelPool

    examples = chat_prompts()[:3]
    with ModelPool() as pool:
        fp32, auto = LabModel(MODEL, dtype="float32"), LabModel(MODEL)  # auto on cpu resolves to float32
        bf16 = LabModel(MODEL, dtype="bfloat16")
        assert auto.dtype == torch.float32 and auto.fingerprint == fp32.fingerprint != bf16.fingerprint
        a = ensure_cache(bf16, examples, tmp_path, hooks=["blocks.3.hook_resid_post"])
        b = ensure_cache(fp32, examples, tmp_path, hooks=["blocks.3.hook_resid_post"])
        assert a.path != b.path and a.model_fingerprint == bf16.fingerprint and b.model_fingerprint == fp32.fingerprint
        # the same request again is served from the file of its own dtype
        assert ensure_cache(fp32, examples, tmp_path, hooks=["blocks.3.hook_resid_post"]).path == b.path
        assert len(pool.residents) == 2 and pool.loads == 2
        # the values differ by bf16 rounding, so serving one for the other would be wrong
        assert abs(a.features(3, "last") - b.features(3, "last")).max() > 1e-3
        with pytest.raises(Exception):  # and build_cache itself keys by the model's fingerprint
            build_cache(bf16, render(examples, bf16.tokenizer), tmp_path, ["blocks.99.hook_resid_post"])


def test_study_stage_keys_carry_the_resolved_dtype():
    from lab.core.config import config_dict
    from lab.directions.options import AnalysisOptions

    cfg = AnalysisOptions()
    assert cfg.dtype == "auto" and cfg.view().dtype == torch.float32
    assert config_dict(AnalysisOptions(dtype="bfloat16"))["dtype"] != config_dict(AnalysisOptions(dtype="float32"))["dtype"]


def test_layers_placed_by_accelerate_give_the_same_results():
    """CPU stand-in for sharding: the planned map puts the first layers on "cpu" and the rest on
    "disk" (accelerate offload: weights move in per forward through the same hooks that move
    activations between GPUs). Everything computes on the CPU, so cross-GPU tensor placement is
    tested on the device (tests/test_scale_cuda.py), not here."""
    from lab.cache import build_cache
    from lab.data.formats import ChatExample
    from lab.intervene.generate import GenerationConfig, generate_answers
    from lab.models import LabModel, ModelPool, plan_device_map
    from lab.models.placement import layer_devices
    from lab.intervene.logprobs import answer_logprobs
    from lab.intervene.steering import Intervention, steer

    with ModelPool() as pool:
        plain = LabModel(MODEL)
        plan = plan_device_map(plain.config, ["cpu", "disk"], torch.float32)
        where = layer_devices(plan, plain.n_layers)
        assert where[0] == "cpu" and where[-1] == "disk" and where == sorted(where)  # contiguous blocks
        assert plan["lm_head"] == plan["model.embed_tokens"] == plan["model.norm"] == "cpu"
        placed = LabModel(MODEL, device_map=plan)
        assert placed.fingerprint == plain.fingerprint and len(pool.residents) == 2
        x = _ids(plain.tokenizer, 1)[0]
        iv = Intervention({5: torch.randn(576), 20: torch.randn(576)}, op="add", alpha=4.0)
        with torch.no_grad():
            assert (placed.hf(x).logits - plain.hf(x).logits).abs().max() <= 1e-5
            with steer(placed, iv):
                a = placed.hf(x).logits
            with steer(plain, iv):
                b = plain.hf(x).logits
            assert (a - b).abs().max() <= 1e-5
        prompts = render(chat_prompts(), plain.tokenizer)
        hooks = ["blocks.2.hook_resid_post", "blocks.25.hook_resid_post"]
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            c1 = build_cache(placed, prompts, d + "/a", hooks, batch_size=2)
            c2 = build_cache(plain, prompts, d + "/b", hooks, batch_size=2)
            assert c1.path.name == c2.path.name  # same fingerprint: the placement does not change values
            for layer in (2, 25):
                assert abs(c1.features(layer, "mean_prompt") - c2.features(layer, "mean_prompt")).max() <= 1e-4
        pairs = [("What should I do about a headache?", "Rest and drink water.")]
        assert abs(answer_logprobs(placed, pairs) - answer_logprobs(plain, pairs)).max() <= 1e-5
        gen = GenerationConfig(max_new_tokens=6, temperature=0.0)
        ex = [ChatExample([{"role": "user", "content": "Name a colour."}], "c")]
        assert generate_answers(placed, ex, gen)[0]["answer"] == generate_answers(plain, ex, gen)[0]["answer"]


def _cli(args, tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.sweep_layers", "--contrast", "refusal", "--limit", "4",
                          "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *args],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text[-2000:]
    return out.returncode, [ln for ln in text.splitlines() if "error" in ln.lower()]  # progress bars aside


def _written(tmp_path) -> list:
    return [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("args, message", [
    (["--device-map", "cuda:0,cuda:1"], "CUDA device"),
    (["--device-map", "auto"], "needs CUDA GPUs"),
    (["--device", "cuda:1"], "CUDA"),
    (["--dtype", "float16"], "float16 compute is not supported on cpu"),
    (["--dtype", "float8"], "invalid choice: 'float8'"),  # refused by the parser (a Literal field)
])
def test_bad_placement_or_dtype_is_one_line_and_writes_nothing(args, message, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("these inputs are only bad on a machine without GPUs")
    rc, lines = _cli(args, tmp_path)
    assert rc != 0 and len(lines) == 1 and message in lines[0], lines
    assert _written(tmp_path) == []


def test_adapter_for_another_base_is_one_line_and_writes_nothing(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=49152))
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "foreign")
    before = set(_written(tmp_path))
    rc, lines = _cli(["--adapters", str(tmp_path / "foreign")], tmp_path)
    assert rc != 0 and len(lines) == 1 and "does not fit this base model" in lines[0], lines
    assert set(_written(tmp_path)) == before


def test_foreign_adapter_leaves_the_resident_model_usable(tmp_path, two_adapters):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from lab.core.errors import IncompatibleError
    from lab.models import LabModel, ModelPool

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=49152))
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "foreign")
    with ModelPool():
        base = LabModel(MODEL)
        organism = base.with_adapters([two_adapters["medical"]])
        x = _ids(base.tokenizer, 1)[0]
        with torch.no_grad():
            want = organism.hf(x).logits
            with pytest.raises(IncompatibleError, match="does not fit"):
                base.with_adapters([tmp_path / "foreign"]).hf
            assert torch.equal(organism.hf(x).logits, want)


def test_export_merged_writes_a_folder_equal_to_the_live_adapter(two_adapters, tmp_path):
    from lab.models import LabModel, ModelPool, export_merged, load_model

    with ModelPool():
        organism = LabModel(MODEL).with_adapters([two_adapters["medical"]])
        folder = export_merged(organism, tmp_path / "merged")
        merged = load_model(str(folder))
        x = _ids(organism.tokenizer, 1)[0]
        with torch.no_grad():
            assert _logit_row_error(merged.hf(x).logits, organism.hf(x).logits) <= FP32_KERNELS
