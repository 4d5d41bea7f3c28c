"""Writing a cache: batched forwards, a background writer, per-batch commits, resume, a per-key lock.

See `lab.cache` for the file format.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch
from einops import einsum

from lab import __version__
from lab.cache.format import (DEFAULT_FIRST_K, DEFAULT_STORAGE, FORMAT, STORAGE_DTYPES, STORED_POOLINGS, VERSION,
                              AttentionImpl, CacheMode, CacheRequest, StorageDtype, cache_key, cache_path)
from lab.cache.read import ActivationCache
from lab.data.formats import ROLE_CODE, PromptSet
from lab.core.errors import BadInput, CacheError
from lab.models.hooks import attention, capture, left_pad, parse_hook, run_until_stop, validate_hooks
from lab.core.io import key_lock
from lab.models import ModelLike

# --------------------------------------------------------------------------- batching


def batch_plan(lengths: np.ndarray, batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Deterministic batches of example indices, longest first (little padding)."""
    order = np.argsort(-lengths, kind="stable")
    batches, current = [], []
    for i in order:
        width = max([lengths[j] for j in current] + [lengths[i]])
        if current and (len(current) >= batch_size or width * (len(current) + 1) > max_batch_tokens):
            batches.append(np.array(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.array(current))
    return batches



def pool_weights(roles: torch.Tensor, mask: torch.Tensor, prompt_end: torch.Tensor, first_k: int) -> torch.Tensor:
    """Pooling as a matrix: (batch, 4, seq) weights, rows in `STORED_POOLINGS` order.

    `weights @ acts` gives all four pooled features of a layer in one batched matmul. Position
    0 (BOS, huge norm) is never pooled. roles/mask: (batch, seq); prompt_end: (batch,) index of
    the last prompt token in padded coordinates.
    """
    real_pos = mask.cumsum(-1) - 1
    not_bos = (real_pos > 0) & mask.bool()
    user = (roles == ROLE_CODE["user"]) & not_bos
    answer = (roles == ROLE_CODE["assistant"]) & not_bos
    first = answer & (answer.cumsum(-1) <= first_k)
    last = torch.zeros_like(mask, dtype=torch.bool)
    last[torch.arange(mask.shape[0], device=mask.device), prompt_end] = True
    w = torch.stack([last, user, answer, first], dim=1).float()
    return w / w.sum(-1, keepdim=True).clamp(min=1)


# --------------------------------------------------------------------------- writing


class _Writer(threading.Thread):
    """Background thread: waits for a batch's host copy, writes it, commits, frees the slot."""

    def __init__(self, h5: h5py.File, sidecar: Path, commit: Callable[[int], None], staging: "_Staging"):
        super().__init__(daemon=True)
        self.h5, self.sidecar, self.commit, self.staging = h5, sidecar, commit, staging
        self.inbox: queue.Queue = queue.Queue()  # the staging ring bounds what can be queued
        self.error: BaseException | None = None
        self.prefix = "acts" if h5.attrs["mode"] == "tokens" else "pooled"

    def run(self) -> None:
        while (item := self.inbox.get()) is not None:
            batch_no, slot, event, target, n_rows = item
            try:
                if self.error is None:
                    if event is not None:
                        event.synchronize()
                    for hook, buf in slot.items():
                        if hook != "__index__":
                            array = buf[:n_rows].numpy()
                            self.h5[f"{self.prefix}/{hook}"][target] = array.view(np.uint16) if array.dtype == np.int16 else array
                    self.commit(batch_no + 1)
            except BaseException as exc:  # surfaced in the main thread
                self.error = exc
            finally:
                self.staging.release(slot)

    def put(self, item: Any) -> None:
        if self.error is not None:
            self.staging.release(item[1])
            raise self.error
        self.inbox.put(item)


def _string_array(values: list) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in values], dtype=h5py.string_dtype())


def _create_file(path: Path, key: str, model: ModelLike, prompts: PromptSet, request: CacheRequest,
                 plan: list[np.ndarray]) -> h5py.File:
    lengths = prompts.lengths
    starts = np.zeros(len(prompts), dtype=np.int64)
    row = 0
    for batch in plan:
        for i in batch:
            starts[i] = row
            row += lengths[i]
    n_tokens = int(lengths.sum())
    h5 = h5py.File(path, "w", track_order=True)
    h5.attrs.update({
        "format": FORMAT, "version": VERSION, "key": key, "complete": False,
        "model_fingerprint": model.fingerprint, "model_name": model.name,
        "prompt_hash": prompts.content_hash, "system_prompt": prompts.system_prompt,
        "hooks": json.dumps(list(request.hooks)), "storage_dtype": request.storage_dtype,
        "mode": request.mode, "attention": request.attention, "first_k": request.first_k,
        "d_model": model.d_model, "n_layers": model.n_layers,
        "n_examples": len(prompts), "n_tokens": n_tokens, "emlab_version": __version__,
    })
    flat_tokens = np.zeros(n_tokens, dtype=np.int32)
    flat_roles = np.zeros(n_tokens, dtype=np.int8)
    for i in range(len(prompts)):
        flat_tokens[starts[i]: starts[i] + lengths[i]] = prompts.tokens[i]
        flat_roles[starts[i]: starts[i] + lengths[i]] = prompts.roles[i]
    h5["tokens"], h5["roles"] = flat_tokens, flat_roles
    h5["starts"], h5["lengths"], h5["prompt_len"] = starts, lengths, prompts.prompt_len
    h5["ids"], h5["labels"] = _string_array(prompts.ids), _string_array(prompts.labels)
    h5["sources"] = _string_array(prompts.sources)
    h5["meta"] = _string_array([json.dumps(m, sort_keys=True) for m in prompts.meta])
    h5["pooled_rows"] = np.argsort(np.concatenate(plan), kind="stable")  # example -> row, plan order
    np_dtype = STORAGE_DTYPES[request.storage_dtype]
    for hook in request.hooks:
        if request.mode == "tokens":
            ds = h5.create_dataset(f"acts/{hook}", shape=(n_tokens, model.d_model), dtype=np_dtype)
        else:
            ds = h5.create_dataset(f"pooled/{hook}", shape=(len(prompts), len(STORED_POOLINGS), model.d_model),
                                   dtype=np_dtype)
            ds.attrs["poolings"] = json.dumps(STORED_POOLINGS)
        ds[-1] = 0  # allocate the contiguous block now, so later writes never touch metadata
    h5.flush()
    return h5


def build_cache(
    model: ModelLike,
    prompts: PromptSet,
    cache_dir: str | Path,
    hooks: list[str] | None = None,
    storage_dtype: StorageDtype = DEFAULT_STORAGE,
    mode: CacheMode = "tokens",
    batch_size: int = 16,
    max_batch_tokens: int = 8192,
    attention_impl: AttentionImpl = "sdpa",
    first_k: int = DEFAULT_FIRST_K,
    on_batch: Callable[[int, int, int], None] | None = None,
) -> "ActivationCache":
    """Compute (or find) the cache of `prompts` on `model`; returns it opened for reading.

    `hooks` defaults to `blocks.{L}.hook_resid_post` for every layer. A second call with the
    same inputs is a no-op; an interrupted call resumes; a concurrent call of the same key
    waits for the running one and returns its file. `on_batch(done, total, tokens)` reports
    progress.
    """
    if len(prompts) == 0:
        raise BadInput("empty prompt set")
    hooks = validate_hooks(hooks or [f"blocks.{L}.hook_resid_post" for L in range(model.n_layers)], model)
    too_long = [i for i, n in zip(prompts.ids, prompts.lengths) if n > model.n_ctx]
    if too_long:
        raise BadInput(f"example {too_long[0]!r} is longer than the model's context ({model.n_ctx}); "
                       "render with max_tokens and truncate=True")
    request = CacheRequest(tuple(hooks), storage_dtype, mode, attention_impl, first_k)
    key = cache_key(model.fingerprint, prompts, request)
    cache_dir = Path(cache_dir)
    final = cache_path(cache_dir, key)
    if final.exists():
        return ActivationCache(final)
    # a lazy model loads here, before the folder, lock or partial file exist: weights or an adapter
    # that cannot load (another base, a damaged file) stop the build having written nothing
    getattr(model, "hf", None)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cache_dir, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable", str(cache_dir))
    except OSError as exc:
        raise CacheError(f"cache dir {cache_dir} is not writable: {exc.strerror or exc}") from None

    with key_lock(final.with_suffix(".h5.lock")):
        if not final.exists():  # else another builder finished it while we waited
            _build(final, key, model, prompts, request, batch_size, max_batch_tokens, on_batch)
    return ActivationCache(final)


def _build(final: Path, key: str, model: ModelLike, prompts: PromptSet, request: CacheRequest, batch_size: int,
           max_batch_tokens: int, on_batch: Callable | None) -> None:
    """Write (or resume) the cache file under a partial name, then rename it into place."""
    partial, sidecar = final.with_suffix(".h5.partial"), final.with_suffix(".progress.json")
    plan = batch_plan(prompts.lengths, batch_size, max_batch_tokens)
    done = _resume_point(partial, sidecar, key)
    try:
        h5 = h5py.File(partial, "r+") if done > 0 else _create_file(partial, key, model, prompts, request, plan)
        _fill(h5, model, prompts, request, plan, done, sidecar, key, on_batch)
        h5.attrs["complete"] = True
        h5.close()
        os.replace(partial, final)
        sidecar.unlink(missing_ok=True)
    except OSError as exc:
        _discard(partial, sidecar)
        if exc.errno == errno.ENOSPC:
            raise CacheError(f"disk full while writing {final.name}; partial file removed") from None
        raise CacheError(f"cannot write cache {final}: {exc.strerror or exc}") from None


def _discard(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _resume_point(partial: Path, sidecar: Path, key: str) -> int:
    """Number of batches already committed by an interrupted build (0: start afresh)."""
    if partial.exists() and sidecar.exists():
        try:
            state = json.loads(sidecar.read_text())
            with h5py.File(partial, "r") as h5:
                ok = h5.attrs.get("key") == key
            if ok and state.get("key") == key:
                return int(state["batches"])
        except (OSError, ValueError, KeyError):
            pass
    _discard(partial, sidecar)
    return 0


def _fill(h5: h5py.File, model: ModelLike, prompts: PromptSet, request: CacheRequest, plan: list[np.ndarray],
          done: int, sidecar: Path, key: str, on_batch: Callable | None) -> None:
    points = [parse_hook(h, model.n_layers) for h in request.hooks]
    fast = all(p is not None for p in points)
    starts = h5["starts"][:]
    plan_row = np.cumsum([0] + [len(b) for b in plan])

    def commit(n_batches: int) -> None:
        h5.flush()
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "batches": n_batches}))
        os.replace(tmp, sidecar)

    max_rows = max(int(prompts.lengths[b].sum()) for b in plan) if request.mode == "tokens" else max(map(len, plan))
    staging = _Staging(request, model, max_rows, slots=3)
    writer = _Writer(h5, sidecar, commit, staging)
    writer.start()
    device, pad = model.device, model.tokenizer.pad_token_id
    try:
        for b in range(done, len(plan)):
            idx = plan[b]
            ids, mask, positions = left_pad([torch.from_numpy(prompts.tokens[i]) for i in idx], pad)
            roles, _, _ = left_pad([torch.from_numpy(prompts.roles[i].astype(np.int64)) for i in idx], 0)
            slot = staging.acquire()  # blocks while the writer still owns every slot (bounded memory)
            batch = _BatchSink(request, slot, mask.to(device), roles.to(device),
                               torch.tensor([len(prompts.tokens[i]) - prompts.prompt_len[i] for i in idx]).to(device))
            _forward(model, ids.to(device), batch.mask, positions.to(device), request, points, fast, batch.sink)
            n_rows = batch.rows
            if request.mode == "tokens":
                row0 = int(starts[idx[0]])
                target = np.s_[row0: row0 + n_rows]
            else:
                target = np.s_[int(plan_row[b]): int(plan_row[b]) + n_rows]
            writer.put((b, slot, staging.ready_event(), target, n_rows))
            if on_batch:
                on_batch(b + 1, len(plan), int(mask.sum()))
    finally:
        writer.inbox.put(None)
        writer.join()
    if writer.error is not None:
        raise writer.error


class _Staging:
    """A ring of preallocated host buffers (pinned on CUDA), one set per in-flight batch.

    Device activations are converted to the storage dtype on the device and copied into a
    slot without blocking; the writer waits for the copy's event, writes, and frees the slot.
    """

    def __init__(self, request: CacheRequest, model: ModelLike, max_rows: int, slots: int):
        self.cuda = model.device.type == "cuda"
        self.devices = [d for d in model.devices if d.type == "cuda"]  # a sharded model copies from each GPU
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.int16}[request.storage_dtype]
        shape = (max_rows, model.d_model) if request.mode == "tokens" else (max_rows, len(STORED_POOLINGS), model.d_model)
        self.slots = [{h: torch.empty(shape, dtype=dtype, pin_memory=self.cuda) for h in request.hooks}
                      for _ in range(slots)]
        self.free: queue.Queue = queue.Queue()
        for i in range(slots):
            self.free.put(i)

    def acquire(self) -> dict[str, torch.Tensor]:
        i = self.free.get()
        self.slots[i]["__index__"] = i  # type: ignore[assignment]
        return self.slots[i]

    def release(self, slot: dict) -> None:
        self.free.put(slot["__index__"])

    def ready_event(self) -> Any:
        if not self.cuda:
            return None
        return _Events(torch.cuda.current_stream(d).record_event() for d in self.devices)


class _Events(list):
    """The copy events of one batch, one per GPU its layers ran on."""

    def synchronize(self) -> None:
        for event in self:
            event.synchronize()


def _storage_view(x: torch.Tensor, storage_dtype: str) -> torch.Tensor:
    """Convert on the device, so only storage-sized bytes cross to the host."""
    if storage_dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16)
    return x.to(torch.float32 if storage_dtype == "float32" else torch.float16)


class _BatchSink:
    """Receives each hooked activation as its layer finishes and stages what is kept."""

    def __init__(self, request: CacheRequest, slot: dict, mask, roles, answer_offset):
        self.request, self.slot, self.mask, self.roles = request, slot, mask, roles
        self.real = mask.bool()
        self.rows = int(self.real.sum()) if request.mode == "tokens" else mask.shape[0]
        if request.mode == "pooled":  # index of the last prompt token in padded coordinates
            self.weights = pool_weights(roles, mask, mask.shape[1] - 1 - answer_offset, request.first_k)

    def sink(self, name: str, x: torch.Tensor) -> None:
        if self.request.mode == "tokens":
            kept = x[self.real.to(x.device)]  # layers of a sharded model live on different GPUs
        else:
            kept = einsum(self.weights.to(x.device, x.dtype), x, "batch pooling seq, batch seq d -> batch pooling d")
        self.slot[name][: self.rows].copy_(_storage_view(kept, self.request.storage_dtype), non_blocking=True)


def _forward(model: ModelLike, ids, mask, positions, request: CacheRequest, points, fast: bool, sink: Callable) -> None:
    with torch.inference_mode():
        if fast:
            with attention(model, request.attention), capture(model, points, sink):
                run_until_stop(lambda: model.hf.model(input_ids=ids, attention_mask=mask, position_ids=positions))
        else:  # a hook only the TransformerLens bridge has
            _, cache = model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=list(request.hooks))
            for h in request.hooks:
                sink(h, cache[h])
