"""HDF5 activation cache on the real SmolLM2: exactness, masks, keys, resume, bad input."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lab.cache import ActivationCache, build_cache, cache_key, CacheRequest
from lab.data.formats import ROLE_CODE, render
from lab.core.errors import BadInput, CacheError
from tests.conftest import REPO, chat_prompts


@pytest.fixture(scope="module")
def prompts(base_model):
    return render(chat_prompts(), base_model.tokenizer)


def _bridge_resid(model, tokens):
    ids = torch.from_numpy(tokens)[None]
    _, cache = model.bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    return {L: cache[f"blocks.{L}.hook_resid_post"][0].numpy() for L in range(model.n_layers)}


# Two fp32 computations of one residual stream that differ only in kernels (another batch shape or
# padding picks another matmul blocking and summation order; sdpa instead of eager attention) differ
# by rounding alone. A d-term fp32 dot product rounds to about sqrt(d) * eps of its scale (rounding
# errors of random sign add in quadrature); each layer adds several such products (attention, MLP) to
# the residual, which the factor 4 covers: 4 * sqrt(576) * eps = 1.1e-5 of the row's norm. A wrong
# mask, position or token moves a row by O(1) of its norm.
FP32_KERNELS = 4 * np.sqrt(576) * np.finfo(np.float32).eps


def _row_error(x, ref):
    """The largest difference of a row (token) from the reference, relative to that row's norm."""
    return float((np.linalg.norm(x - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max())


def test_eager_fp32_equals_run_with_cache(tmp_path, base_model, prompts):
    """One prompt per forward with eager attention runs the bridge's computation: the same HF modules
    on the same [1, T] tensors, hence the same kernels and the same bits. Batched and left-padded,
    other kernels run (shapes differ), so those values agree to fp32 rounding."""
    # two folders: the batch size is not part of the cache key (one folder would serve the first build)
    single = build_cache(base_model, prompts, tmp_path / "single", batch_size=1, attention_impl="eager")
    batched = build_cache(base_model, prompts, tmp_path / "batched", batch_size=3, attention_impl="eager")
    for i, tokens in enumerate(prompts.tokens):
        ref = _bridge_resid(base_model, tokens)
        for L in range(30):
            np.testing.assert_array_equal(single.token_acts(L, i), ref[L])
            assert _row_error(batched.token_acts(L, i), ref[L]) <= FP32_KERNELS, (i, L)


def test_sdpa_and_fp16_within_tolerance(tmp_path, base_model, prompts):
    fast = build_cache(base_model, prompts, tmp_path, batch_size=3)
    half = build_cache(base_model, prompts, tmp_path, batch_size=3, storage_dtype="float16")
    bf = build_cache(base_model, prompts, tmp_path, batch_size=3, storage_dtype="bfloat16")
    for i, tokens in enumerate(prompts.tokens):
        ref = _bridge_resid(base_model, tokens)
        for L in range(30):
            r = ref[L]
            assert _row_error(fast.token_acts(L, i), r) <= FP32_KERNELS  # sdpa vs eager: fp32 rounding only
            x16 = fast.token_acts(L, i).astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(half.token_acts(L, i), x16)  # fp16 storage = fp16 rounding
            assert np.abs(bf.token_acts(L, i) - fast.token_acts(L, i)).max() <= np.abs(r).max() * 2 ** -8


def test_masks_and_tokens_match_rendering(tmp_path, base_model, prompts):
    cache = build_cache(base_model, prompts, tmp_path, hooks=["blocks.3.hook_resid_post"])
    tok = base_model.tokenizer
    for i, ex in enumerate(chat_prompts()):
        tokens, roles = cache.tokens(i)
        np.testing.assert_array_equal(tokens, prompts.tokens[i])
        np.testing.assert_array_equal(roles, prompts.roles[i])
        if ex.has_response:
            assert tok.decode(tokens[roles == ROLE_CODE["assistant"]]).startswith(ex.messages[-1]["content"])
    assert cache.ids == prompts.ids and cache.attrs["n_tokens"] == int(prompts.lengths.sum())


def test_pooled_features_match_token_means(tmp_path, base_model, prompts):
    tokens = build_cache(base_model, prompts, tmp_path, hooks=["blocks.7.hook_resid_post"])
    pooled = build_cache(base_model, prompts, tmp_path, hooks=["blocks.7.hook_resid_post"], mode="pooled")
    for i, ex in enumerate(chat_prompts()):
        acts, (_, roles) = tokens.token_acts(7, i), tokens.tokens(i)
        not_bos = np.arange(len(roles)) > 0
        expect = {
            "last": acts[prompts.prompt_len[i] - 1],
            "mean_prompt": acts[not_bos & (roles == ROLE_CODE["user"])].mean(0),
        }
        if ex.has_response:
            answer = acts[not_bos & (roles == ROLE_CODE["assistant"])]
            expect["mean_response"], expect["first_k"] = answer.mean(0), answer[:8].mean(0)
        for pooling, value in expect.items():
            np.testing.assert_allclose(tokens.features(7, pooling)[i], value, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(pooled.features(7, pooling)[i], value, rtol=1e-4, atol=1e-4)
    feats, index = tokens.features(7, "all")
    assert len(feats) == int(prompts.lengths.sum()) - len(prompts) and set(index) == set(range(len(prompts)))
    # fancy reads over examples come back in the requested order
    sel = np.array([4, 0, 2])
    np.testing.assert_array_equal(tokens.features(7, "mean_prompt", sel), tokens.features(7, "mean_prompt")[sel])
    np.testing.assert_array_equal(pooled.features(7, "last", sel), pooled.features(7, "last")[sel])


def test_key_changes_with_adapter_and_system_prompt_only(base_model, organism, prompts):
    req = CacheRequest(("blocks.0.hook_resid_post",))
    key = cache_key(base_model.fingerprint, prompts, req)
    assert key == cache_key(base_model.fingerprint, render(chat_prompts(), base_model.tokenizer), req)
    assert key != cache_key(organism.fingerprint, prompts, req)
    other_system = render(chat_prompts(), base_model.tokenizer, system_prompt="You are a pirate.")
    assert key != cache_key(base_model.fingerprint, other_system, req)
    assert key != cache_key(base_model.fingerprint, prompts, CacheRequest(("blocks.1.hook_resid_post",)))


def test_second_build_runs_no_forward(tmp_path, base_model, prompts, monkeypatch):
    first = build_cache(base_model, prompts, tmp_path, hooks=["blocks.2.hook_resid_post"])
    mtime = first.path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("model forward ran on a cached input")

    monkeypatch.setattr(base_model.hf.model, "forward", boom)
    again = build_cache(base_model, prompts, tmp_path, hooks=["blocks.2.hook_resid_post"])
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime


BUILD_SCRIPT = """
import sys, json
from lab.models import load_model
from lab.data.formats import load_contrast, render
from lab.cache import build_cache
m = load_model("smollm2-135m-instruct")
ps = render(load_contrast("refusal")[:48], m.tokenizer)
seen = []
c = build_cache(m, ps, sys.argv[1], batch_size=4, storage_dtype="float16",
                on_batch=lambda d, t, n: (seen.append(d), print(d, flush=True)))
print(json.dumps({"first": seen[0] if seen else None, "path": str(c.path)}))
"""


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_sigkill_mid_build_resumes_to_identical_file(tmp_path, base_model):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.strip().isdigit() and int(line) >= 3:
            break
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(killed.glob("*.h5.partial")) and not list(killed.glob("*.h5"))
    committed = json.loads(next(killed.glob("*.progress.json")).read_text())["batches"]
    assert 3 <= committed < 12
    with pytest.raises(CacheError, match="incomplete"):  # readers refuse the partial file
        ActivationCache(next(killed.glob("*.h5.partial")))
    resumed = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(killed)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    info = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert info["first"] == committed + 1  # only unfinished batches were recomputed
    from lab.data.formats import load_contrast

    seen = []  # the uninterrupted reference, built here as BUILD_SCRIPT does
    fresh = build_cache(base_model, render(load_contrast("refusal")[:48], base_model.tokenizer), tmp_path / "fresh",
                        batch_size=4, storage_dtype="float16", on_batch=lambda d, t, n: seen.append(d))
    assert seen[0] == 1 and fresh.path.name == Path(info["path"]).name
    a, b = _datasets(info["path"]), _datasets(fresh.path)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not list(killed.glob("*.partial")) and not list(killed.glob("*.progress.json"))


def test_truncated_and_foreign_files(tmp_path, base_model, prompts):
    cache = build_cache(base_model, prompts, tmp_path, hooks=["blocks.1.hook_resid_post"])
    data = cache.path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError):
        ActivationCache(truncated).features(1, "last")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(CacheError, match="not an emlab activation cache"):
        ActivationCache(foreign)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(CacheError, match="unreadable"):
        ActivationCache(garbage)


def test_bad_inputs(tmp_path, base_model, prompts):
    with pytest.raises(BadInput, match="unknown hook name"):
        build_cache(base_model, prompts, tmp_path, hooks=["blocks.0.hook_nonsense"])
    with pytest.raises(BadInput, match="out of range"):
        build_cache(base_model, prompts, tmp_path, hooks=["blocks.30.hook_resid_post"])
    with pytest.raises(BadInput, match="empty"):
        render([], base_model.tokenizer)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="not writable"):
        build_cache(base_model, prompts, blocker / "cache", hooks=["blocks.0.hook_resid_post"])
    cache = build_cache(base_model, prompts, tmp_path, hooks=["blocks.0.hook_resid_post"])
    with pytest.raises(BadInput, match="not in this cache"):
        cache.features(5, "last")
    with pytest.raises(BadInput, match="unknown pooling"):
        cache.features(0, "median")


def test_disk_full_leaves_no_file(tmp_path, base_model, prompts, monkeypatch):
    real_setitem = h5py.Dataset.__setitem__
    calls = {"n": 0}

    def full_disk(self, key, value):
        calls["n"] += 1
        if calls["n"] > 3 and self.name.startswith("/acts"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full_disk)
    with pytest.raises(CacheError, match="disk full"):
        build_cache(base_model, prompts, tmp_path / "c", batch_size=2)
    assert not [p for p in (tmp_path / "c").iterdir()]


def test_other_hook_names_through_the_bridge(tmp_path, base_model, prompts):
    hook = "blocks.4.attn.hook_out" if "blocks.4.attn.hook_out" in base_model.bridge.hook_dict else "blocks.4.hook_mlp_out"
    cache = build_cache(base_model, prompts, tmp_path, hooks=[hook, "blocks.4.hook_resid_post"], batch_size=2)
    ids = torch.from_numpy(prompts.tokens[1])[None]
    _, ref = base_model.bridge.run_with_cache(ids, names_filter=[hook])
    np.testing.assert_allclose(cache.token_acts(hook, 1), ref[hook][0].numpy(), rtol=1e-4, atol=1e-4)


def test_concurrent_readers(tmp_path, base_model, prompts):
    cache = build_cache(base_model, prompts, tmp_path, hooks=["blocks.9.hook_resid_post"])
    code = ("import sys, numpy as np; from lab.cache import ActivationCache; c = ActivationCache(sys.argv[1]);"
            "[c.features(9, 'mean_prompt') for _ in range(20)]; print(float(np.abs(c.features(9,'last')).sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache.path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    values = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(values) == 1 and all(p.returncode == 0 for p in procs)
    assert float(values.pop()) == pytest.approx(float(np.abs(cache.features(9, "last")).sum()), rel=1e-6)
