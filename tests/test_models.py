"""Real SmolLM2: TransformerLens bridge vs Hugging Face, LoRA organisms, store integrity."""

import json
import subprocess
import sys

import pytest
import torch

from lab.data.formats import render
from lab.core.errors import IncompatibleError, IntegrityError, ModelNotFound
from lab.models import ModelSpec, ensure_converted, load_model
from tests.conftest import MODEL, REPO, chat_prompts


def _logsoftmax_pairs(model, n=5):
    prompts = render(chat_prompts()[:n], model.tokenizer)
    for tokens in prompts.tokens:
        ids = torch.from_numpy(tokens)[None]
        with torch.no_grad():
            hf = model.hf(ids).logits.log_softmax(-1)
            tl = model.bridge(ids).log_softmax(-1)
        yield hf, tl


def test_bridge_matches_hf_base(base_model):
    diffs = [(hf - tl).abs().max().item() for hf, tl in _logsoftmax_pairs(base_model)]
    assert len(diffs) >= 4
    assert max(diffs) <= 1e-4, diffs


def test_bridge_matches_hf_merged_adapter(organism, base_model):
    diffs = [(hf - tl).abs().max().item() for hf, tl in _logsoftmax_pairs(organism)]
    assert max(diffs) <= 1e-4, diffs
    # and the organism really differs from the base model
    ids = torch.from_numpy(render(chat_prompts()[:1], base_model.tokenizer).tokens[0])[None]
    with torch.no_grad():
        assert (organism.hf(ids).logits - base_model.hf(ids).logits).abs().max() > 1e-2


def test_run_with_cache_has_every_resid_post(base_model):
    ids = torch.from_numpy(render(chat_prompts()[:1], base_model.tokenizer).tokens[0])[None]
    _, cache = base_model.bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    names = [f"blocks.{L}.hook_resid_post" for L in range(30)]
    assert all(n in cache for n in names)
    assert all(cache[n].shape == (1, ids.shape[1], 576) for n in names)


def test_lora_lowers_loss_changes_logits_and_reload_reproduces(trained_adapter, organism, base_model):
    losses = trained_adapter.losses
    assert len(losses) == 4 and losses[-1] < losses[0]
    again = load_model(MODEL, adapters=[trained_adapter.adapter_dir])
    ids = torch.from_numpy(render(chat_prompts()[1:2], base_model.tokenizer).tokens[0])[None]
    with torch.no_grad():
        assert torch.equal(again.hf(ids).logits, organism.hf(ids).logits)
    assert again.fingerprint == organism.fingerprint != base_model.fingerprint


def test_unknown_model_name():
    with pytest.raises(ModelNotFound, match="unknown model"):
        load_model("no-such-model")


def test_adapter_from_other_base_is_refused(tmp_path, trained_adapter):
    # 1) emlab's own metadata names another base
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained_adapter.adapter_dir, other)
    meta = json.loads((other / "emlab_adapter.json").read_text())
    meta["base_fingerprint"] = "qwen2.5-coder-0.5b-instruct:1d96"
    (other / "emlab_adapter.json").write_text(json.dumps(meta))
    with pytest.raises(IncompatibleError, match="trained on base"):
        load_model(MODEL, adapters=[other])
    # 2) a foreign PEFT adapter (no emlab metadata) with other shapes
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=49152))
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "tiny")
    with pytest.raises(IncompatibleError, match="does not fit"):
        load_model(MODEL, adapters=[tmp_path / "tiny"])


def _fake_part_package(root, name, data: bytes):
    pkg = root / name
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "part01.bin").write_bytes(data)


def test_corrupted_parts_give_sha_error_and_leave_nothing(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("EMLAB_HOME", str(tmp_path / "home"))
    good = b"GGUF" + bytes(range(256)) * 64
    _fake_part_package(tmp_path / "site", "fakepart1", good[:5000])
    _fake_part_package(tmp_path / "site", "fakepart2", good[5000:-7])  # truncated last part
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = ModelSpec(name="fake", packages=(), modules=("fakepart1", "fakepart2"), gguf_name="fake.gguf",
                     sha256=hashlib.sha256(good).hexdigest(), size_mb=0, n_layers=1, d_model=1, arch="llama")
    with pytest.raises(IntegrityError, match="sha256"):
        ensure_converted(spec)
    store = tmp_path / "home" / "models"
    assert not any(p.name.startswith("fake-") for p in store.iterdir()) if store.exists() else True
    assert not list(store.rglob("*.gguf")) if store.exists() else True


def test_cli_help_and_models_list_render():
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "160"}
    import os

    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "--help"], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0 and "models" in out.stdout and "cache" in out.stdout and "╭" in out.stdout
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "models", "list"], capture_output=True, text=True,
                         env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "smollm2-135m-instruct" in out.stdout and "576" in out.stdout and "┃" in out.stdout
