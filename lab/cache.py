"""HDF5 activation cache: residual streams per layer and token, content-addressed and resumable.

A cache holds, for one (model fingerprint, prompt set, hook list, storage dtype, mode),
the activations of every real token (no padding) of every example, or, in `pooled` mode,
only the pooled per-example features. Everything downstream (directions, sweeps, pooling
comparisons, transfer, reports) reads it instead of rerunning the model.

File format (`<cache_dir>/<key[:20]>.h5`, format version 2)::

    attrs      format="emlab-activation-cache", version, key, complete, model_fingerprint,
               model_name, prompt_hash, system_prompt, hooks (JSON), storage_dtype, mode,
               d_model, n_layers, n_examples, n_tokens, attention, emlab_version
    tokens     (n_tokens,) int32     token ids, examples laid out in batch-plan order
    roles      (n_tokens,) int8      0 template glue, 1 system, 2 user, 3 assistant
    starts     (n_examples,) int64   first row of example i (examples in prompt-set order)
    lengths    (n_examples,) int64   its number of tokens
    prompt_len (n_examples,) int64   tokens up to the generation prompt; last prompt token
                                     is row starts[i] + prompt_len[i] - 1
    ids, labels, sources, meta       per-example strings (meta is JSON)
    acts/<hook>            (n_tokens, d_model)   mode "tokens"
    pooled/<hook>          (n_examples, 4, d_model) mode "pooled": last, mean_prompt,
                           mean_response, first_k; row pooled_rows[i] holds example i

Storage dtypes: float32, float16, and bfloat16 kept as its raw 16 bits in uint16 datasets
(HDF5 has no bf16 type) with `attrs["storage_dtype"] = "bfloat16"`; readers convert back.
No compression: gzip writes at ~0.03 GB/s, far below the forward pass.

Writing runs batched forwards (left padding, attention mask, real position ids), stops
after the deepest requested layer, and hands host copies to a background writer thread
through a bounded queue (memory stays flat however many tokens). Progress is committed per
batch: the file is flushed, then a sidecar JSON records the committed batch count. A killed
build resumes from there; the finished file is renamed into place atomically, so readers
never see a partial cache.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch
from jaxtyping import Float, Int

from lab import __version__
from lab.data import ROLE_CODE, PromptSet
from lab.errors import BadInput, CacheError
from lab.hooks import attention, capture, left_pad, parse_hook, run_until_stop, validate_hooks
from lab.io import sha256_json
from lab.models import ModelLike

FORMAT = "emlab-activation-cache"
VERSION = 2
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
MODES = ("tokens", "pooled")
STORED_POOLINGS = ("last", "mean_prompt", "mean_response", "first_k")
POOLINGS = STORED_POOLINGS + ("all",)
DEFAULT_FIRST_K = 8


@dataclass(frozen=True)
class CacheRequest:
    """What to cache; together with the model fingerprint and prompt hash it forms the key."""

    hooks: tuple[str, ...]
    storage_dtype: str = "float32"
    mode: str = "tokens"
    attention: str = "sdpa"
    first_k: int = DEFAULT_FIRST_K

    def __post_init__(self):
        if self.storage_dtype not in STORAGE_DTYPES:
            raise BadInput(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, not {self.storage_dtype!r}")
        if self.mode not in MODES:
            raise BadInput(f"cache mode must be one of {', '.join(MODES)}, not {self.mode!r}")


def cache_key(model_fingerprint: str, prompts: PromptSet, request: CacheRequest) -> str:
    return sha256_json({
        "model": model_fingerprint,
        "prompts": prompts.content_hash,
        "hooks": list(request.hooks),
        "storage": request.storage_dtype,
        "mode": request.mode,
        "attention": request.attention,
        "first_k": request.first_k if request.mode == "pooled" else None,
        "format": VERSION,
    })


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{key[:20]}.h5"


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


def _from_storage(arr: np.ndarray, storage_dtype: str) -> np.ndarray:
    if storage_dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16).float().numpy()
    return arr.astype(np.float32, copy=False)


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
    storage_dtype: str = "float32",
    mode: str = "tokens",
    batch_size: int = 16,
    max_batch_tokens: int = 8192,
    attention_impl: str = "sdpa",
    first_k: int = DEFAULT_FIRST_K,
    on_batch: Callable[[int, int, int], None] | None = None,
) -> "ActivationCache":
    """Compute (or find) the cache of `prompts` on `model`; returns it opened for reading.

    `hooks` defaults to `blocks.{L}.hook_resid_post` for every layer. A second call with the
    same inputs is a no-op; an interrupted call resumes. `on_batch(done, total, tokens)`
    reports progress.
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
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cache_dir, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable", str(cache_dir))
    except OSError as exc:
        raise CacheError(f"cache dir {cache_dir} is not writable: {exc.strerror or exc}") from None

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
    return ActivationCache(final)


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
            kept = torch.bmm(self.weights.to(x.device, x.dtype), x)  # (batch, 4, d)
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


# --------------------------------------------------------------------------- reading


class ActivationCache:
    """Read-only view of a finished cache file.

    Reading never loads the model, and `features` reads one hook at a time in bounded
    blocks, so other layers are never pulled into memory.

        cache = ActivationCache("cache/ab12....h5")
        X = cache.features(14, "last")                  # (n_examples, d_model)
        X, ex = cache.features(14, "all")               # every token, with example index
        y = cache.labels
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CacheError(f"{self.path}: no such cache file")
        try:
            with h5py.File(self.path, "r") as h5:
                attrs = dict(h5.attrs)
                if attrs.get("format") != FORMAT:
                    raise CacheError(f"{self.path} is not an emlab activation cache (format attribute missing)")
                if int(attrs.get("version", -1)) != VERSION:
                    raise CacheError(f"{self.path}: cache format version {attrs.get('version')} (expected {VERSION})")
                if not attrs.get("complete"):
                    raise CacheError(f"{self.path}: incomplete cache (an interrupted build)")
                self.starts, self.lengths = h5["starts"][:], h5["lengths"][:]
                self.prompt_len = h5["prompt_len"][:]
                self.ids = [s.decode() if isinstance(s, bytes) else s for s in h5["ids"][:]]
                self.labels = [s.decode() if isinstance(s, bytes) else s for s in h5["labels"][:]]
                self.meta = [json.loads(s) for s in h5["meta"].asstr()[:]]
        except OSError as exc:
            raise CacheError(f"{self.path}: unreadable HDF5 file ({str(exc).splitlines()[0][:120]})") from None
        self.attrs = attrs
        self.hooks: list[str] = json.loads(attrs["hooks"])
        self.storage_dtype: str = attrs["storage_dtype"]
        self.mode: str = attrs["mode"]
        self.d_model, self.n_layers = int(attrs["d_model"]), int(attrs["n_layers"])
        self.model_fingerprint: str = attrs["model_fingerprint"]

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"ActivationCache({self.path.name}: {self.attrs['model_name']}, {len(self)} examples, "
                f"{self.attrs['n_tokens']} tokens, {len(self.hooks)} hooks, {self.storage_dtype}, {self.mode})")

    def hook_name(self, layer_or_hook: int | str) -> str:
        hook = f"blocks.{layer_or_hook}.hook_resid_post" if isinstance(layer_or_hook, int) else layer_or_hook
        if hook not in self.hooks:
            raise BadInput(f"{hook!r} is not in this cache (it holds {self.hooks[0]} .. {self.hooks[-1]})")
        return hook

    @property
    def layers(self) -> list[int]:
        return [p.layer for h in self.hooks if (p := parse_hook(h, self.n_layers)) and p.kind == "post"]

    @property
    def groups(self) -> list[str] | None:
        """Pair/group ids from example metadata (answer contrasts), or None."""
        groups = [m.get("group") for m in self.meta]
        return groups if all(g is not None for g in groups) else None

    def label_array(self, positive: str) -> Int[np.ndarray, " n"]:
        """Binary labels: 1 where the example's label equals `positive`."""
        y = np.array([lab == positive for lab in self.labels], dtype=np.int64)
        return y

    def tokens(self, example: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and role codes of one example."""
        s, n = int(self.starts[example]), int(self.lengths[example])
        with h5py.File(self.path, "r") as h5:
            return h5["tokens"][s: s + n], h5["roles"][s: s + n]

    def token_acts(self, layer_or_hook: int | str, example: int) -> Float[np.ndarray, "seq d"]:
        """All token activations of one example at one hook (tokens mode)."""
        hook = self.hook_name(layer_or_hook)
        self._need_tokens("token_acts")
        s, n = int(self.starts[example]), int(self.lengths[example])
        with h5py.File(self.path, "r") as h5:
            return _from_storage(h5[f"acts/{hook}"][s: s + n], self.storage_dtype)

    def _need_tokens(self, what: str) -> None:
        if self.mode != "tokens":
            raise BadInput(f"{what} needs a per-token cache; this one stores pooled features only")

    def features(self, layer_or_hook: int | str, pooling: str = "last", examples: np.ndarray | None = None,
                 k: int = DEFAULT_FIRST_K, exclude_bos: bool = True):
        """Per-example features at one hook.

        pooling: `last` (last prompt token), `mean_prompt` (user tokens), `mean_response`
        (assistant tokens), `first_k` (first k assistant tokens), or `all` (every token;
        returns `(features, example_index)`). Position 0 is excluded unless
        `exclude_bos=False`. Returns float32 numpy arrays, rows in `examples` order.
        """
        if pooling not in POOLINGS:
            raise BadInput(f"unknown pooling {pooling!r} (one of {', '.join(POOLINGS)})")
        hook = self.hook_name(layer_or_hook)
        sel = np.arange(len(self)) if examples is None else np.asarray(examples, dtype=np.int64)
        if self.mode == "pooled":
            if pooling == "all" or (pooling == "first_k" and k != self.attrs["first_k"]) or not exclude_bos:
                raise BadInput(f"this pooled cache has {', '.join(STORED_POOLINGS)} "
                               f"(first_k with k={self.attrs['first_k']}, BOS excluded) only")
            with h5py.File(self.path, "r") as h5:
                rows = h5["pooled_rows"][:][sel]
                order = np.argsort(rows)
                data = _from_storage(h5[f"pooled/{hook}"][rows[order].tolist(), STORED_POOLINGS.index(pooling)],
                                     self.storage_dtype)
            out = np.empty_like(data)
            out[order] = data
            return _checked(out, self.d_model)
        return self._pool_tokens(hook, pooling, sel, k, exclude_bos)

    def _row_weights(self, pooling: str, roles: np.ndarray, pos: np.ndarray, k: int, exclude_bos: bool) -> np.ndarray:
        keep = pos > 0 if exclude_bos else np.ones_like(pos, dtype=bool)
        if pooling == "mean_prompt":
            return keep & (roles == ROLE_CODE["user"])
        if pooling in ("mean_response", "first_k"):
            return keep & (roles == ROLE_CODE["assistant"])
        return keep

    def _pool_tokens(self, hook: str, pooling: str, sel: np.ndarray, k: int, exclude_bos: bool):
        rows_budget = 1 << 15  # rows read per block: bounded memory whatever the cache size
        out = np.zeros((len(sel), self.d_model), dtype=np.float32)
        all_feats, all_index = [], []
        by_start = np.argsort(self.starts[sel], kind="stable")
        with h5py.File(self.path, "r") as h5:
            dset, roles_all = h5[f"acts/{hook}"], h5["roles"]
            if pooling == "last":
                rows = self.starts[sel] + self.prompt_len[sel] - 1
                order = np.argsort(rows)
                data = _from_storage(dset[rows[order].tolist()], self.storage_dtype)
                out[order] = data
                return _checked(out, self.d_model)
            i = 0
            while i < len(by_start):
                j = i
                first = int(self.starts[sel[by_start[i]]])
                while j < len(by_start) and (self.starts[sel[by_start[j]]] + self.lengths[sel[by_start[j]]] - first <= rows_budget or j == i):
                    j += 1
                block_ex = sel[by_start[i:j]]
                last = int(max(self.starts[block_ex] + self.lengths[block_ex]))
                block = _from_storage(dset[first:last], self.storage_dtype)
                roles = roles_all[first:last]
                for n, ex in zip(by_start[i:j], block_ex):
                    s, length = int(self.starts[ex]) - first, int(self.lengths[ex])
                    pos = np.arange(length)
                    w = self._row_weights(pooling, roles[s: s + length], pos, k, exclude_bos)
                    if pooling == "first_k":
                        w &= np.cumsum(w) <= k
                    x = block[s: s + length]
                    if pooling == "all":
                        all_feats.append(x[w])
                        all_index.append(np.full(int(w.sum()), n, dtype=np.int64))
                    elif w.any():
                        out[n] = x[w].mean(0)
                i = j
        if pooling == "all":
            feats, index = np.concatenate(all_feats), np.concatenate(all_index)
            order = np.argsort(index, kind="stable")
            return _checked(feats[order], self.d_model), index[order]
        return _checked(out, self.d_model)

    def stack(self, pooling: str = "last", layers: list[int] | None = None, examples=None, k: int = DEFAULT_FIRST_K
              ) -> Float[np.ndarray, "layer n d"]:
        """Features of several layers stacked (layer, example, d_model), for all-layer maths."""
        layers = self.layers if layers is None else layers
        return np.stack([self.features(L, pooling, examples, k) for L in layers])


def _checked(x: np.ndarray, d_model: int) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != d_model:
        raise CacheError(f"feature matrix has shape {x.shape}, expected (n, {d_model})")
    return x


def list_caches(cache_dir: str | Path) -> list[dict]:
    rows = []
    for path in sorted(Path(cache_dir).glob("*.h5")):
        try:
            c = ActivationCache(path)
            rows.append({"path": str(path), "model": c.attrs["model_name"], "examples": len(c),
                         "tokens": int(c.attrs["n_tokens"]), "hooks": len(c.hooks), "dtype": c.storage_dtype,
                         "mode": c.mode, "size_mb": path.stat().st_size / 2**20,
                         "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))})
        except CacheError as exc:
            rows.append({"path": str(path), "error": str(exc)})
    return rows
