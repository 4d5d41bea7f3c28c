"""Reading a cache: `ActivationCache` (features per hook in bounded blocks) and `list_caches`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
from jaxtyping import Float, Int

from lab.cache.format import DEFAULT_FIRST_K, FORMAT, POOLINGS, STORED_POOLINGS, VERSION
from lab.cache.format import from_storage as _from_storage
from lab.data.formats import ROLE_CODE
from lab.core.errors import BadInput, CacheError
from lab.models.hooks import parse_hook

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
