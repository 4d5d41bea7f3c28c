"""Data-parallel activation caching: one process per GPU, each building a shard, merged into one cache.

    torchrun --nproc-per-node 2 -m lab.shards --model DIR --data refusal --cache-dir cache
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 -m lab.shards ...   # across nodes

Every rank renders the same prompts and computes the same global batch plan as a one-process
build (`lab.cache.batch_plan`), then takes the batches `b` with `b % world == rank`. Its shard
is an ordinary cache of that subset, built by `lab.cache.build_cache` on its own GPU: because
the plan packs examples longest-first, greedily, the subset's own plan reproduces exactly those
global batches, so every example is computed in the same batch (same padding, same kernels) as
in a one-process build. Rank 0 then waits for all shards and copies each example's rows into a
file laid out by the global plan, under the global key: readers cannot tell it from a
one-process build (tested on CPU with two processes: identical arrays).

Across nodes the same command runs under torchrun's rendezvous; the shard files and the merge
need one file system that every node sees (the cache folder). No collective communication is
needed: the ranks meet at the shard files.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from lab.cache import ActivationCache, CacheRequest, batch_plan, build_cache, cache_key, cache_path
from lab.cache.build import _create_file
from lab.data import PromptSet
from lab.errors import CacheError
from lab.models import ModelLike

SHARDS = "shards"


def rank_examples(prompts: PromptSet, world: int, rank: int, batch_size: int = 16,
                  max_batch_tokens: int = 8192) -> np.ndarray:
    """Indices of the examples rank `rank` computes: whole batches of the one-process plan."""
    plan = batch_plan(prompts.lengths, batch_size, max_batch_tokens)
    mine = [b for i, b in enumerate(plan) if i % world == rank]
    return np.sort(np.concatenate(mine)) if mine else np.zeros(0, dtype=np.int64)


def subset(prompts: PromptSet, index: np.ndarray) -> PromptSet:
    pick = lambda xs: [xs[i] for i in index]  # noqa: E731
    return replace(prompts, ids=pick(prompts.ids), tokens=pick(prompts.tokens), roles=pick(prompts.roles),
                   prompt_len=prompts.prompt_len[index], labels=pick(prompts.labels), sources=pick(prompts.sources),
                   meta=pick(prompts.meta) if prompts.meta else [])


def build_shard(model: ModelLike, prompts: PromptSet, cache_dir: str | Path, world: int, rank: int,
                hooks: list[str] | None = None, storage_dtype: str = "float32", mode: str = "tokens",
                batch_size: int = 16, max_batch_tokens: int = 8192) -> ActivationCache | None:
    """This rank's shard: an ordinary cache of its batches, in `<cache_dir>/shards/`."""
    index = rank_examples(prompts, world, rank, batch_size, max_batch_tokens)
    if len(index) == 0:
        return None
    return build_cache(model, subset(prompts, index), Path(cache_dir) / SHARDS, hooks, storage_dtype, mode,
                       batch_size, max_batch_tokens)


def merge_shards(model: ModelLike, prompts: PromptSet, cache_dir: str | Path, world: int,
                 hooks: list[str] | None = None, storage_dtype: str = "float32", mode: str = "tokens",
                 batch_size: int = 16, max_batch_tokens: int = 8192, wait_s: float = 3600) -> ActivationCache:
    """Rank 0: wait for every shard, then write the one cache a one-process build would have written."""
    hooks = list(hooks or [f"blocks.{L}.hook_resid_post" for L in range(model.n_layers)])
    request = CacheRequest(tuple(hooks), storage_dtype, mode)
    key = cache_key(model.fingerprint, prompts, request)
    final = cache_path(cache_dir, key)
    if final.exists():
        return ActivationCache(final)
    shards = []
    for rank in range(world):
        index = rank_examples(prompts, world, rank, batch_size, max_batch_tokens)
        if len(index):
            part = subset(prompts, index)
            path = cache_path(Path(cache_dir) / SHARDS, cache_key(model.fingerprint, part, request))
            shards.append((index, _wait_for(path, wait_s)))
    plan = batch_plan(prompts.lengths, batch_size, max_batch_tokens)
    partial = final.with_suffix(".h5.merging")
    h5 = _create_file(partial, key, model, prompts, request, plan)
    try:
        prefix = "acts" if mode == "tokens" else "pooled"
        starts, rows = h5["starts"][:], h5["pooled_rows"][:]
        for index, shard in shards:
            with h5py.File(shard.path, "r") as src:
                s_starts, s_rows = src["starts"][:], src["pooled_rows"][:]
                for hook in hooks:
                    data, out = src[f"{prefix}/{hook}"][:], h5[f"{prefix}/{hook}"]
                    for local, i in enumerate(index):
                        if mode == "tokens":
                            n = int(prompts.lengths[i])
                            out[starts[i]: starts[i] + n] = data[s_starts[local]: s_starts[local] + n]
                        else:
                            out[rows[i]] = data[s_rows[local]]
        h5.attrs["complete"] = True
        h5.close()
        os.replace(partial, final)
    except BaseException:
        h5.close()
        partial.unlink(missing_ok=True)
        raise
    return ActivationCache(final)


def _wait_for(path: Path, wait_s: float) -> ActivationCache:
    deadline = time.time() + wait_s
    while not path.exists():
        if time.time() > deadline:
            raise CacheError(f"shard {path.name} did not appear within {wait_s:.0f} s (did a rank fail?)")
        time.sleep(0.5)
    return ActivationCache(path)


def main(argv=None) -> None:
    """`torchrun -m lab.shards`: RANK, WORLD_SIZE, LOCAL_RANK come from the launcher's environment."""
    from lab.console import console, user_errors
    from lab.data import load_examples, render
    from lab.models import LabModel

    ap = argparse.ArgumentParser(description="data-parallel activation cache (run under torchrun)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--storage", default="float16")
    ap.add_argument("--mode", default="tokens")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="", help="default: cuda:LOCAL_RANK if CUDA, else cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--report", default="", help="write this rank's timings as JSON to REPORT.<rank>")
    args = ap.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    import torch

    device = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    with user_errors():
        model = LabModel(args.model, dtype=args.dtype, device=device)
        prompts = render(load_examples(args.data), model.tokenizer)
        kw = dict(storage_dtype=args.storage, mode=args.mode, batch_size=args.batch_size)
        model.model  # load before the clock starts: the report times caching, not loading
        start = time.perf_counter()
        shard = build_shard(model, prompts, args.cache_dir, world, rank, **kw)
        timing = {"rank": rank, "world": world, "build_s": time.perf_counter() - start,
                  "tokens": int(shard.attrs["n_tokens"]) if shard else 0}
        if rank == 0:
            start = time.perf_counter()
            cache = merge_shards(model, prompts, args.cache_dir, world, **kw)
            timing["wait_and_merge_s"] = time.perf_counter() - start
            console.print(f"[green]cache[/] {cache.path}  {cache!r}")
        if args.report:
            import json

            Path(f"{args.report}.{rank}").write_text(json.dumps(timing))


if __name__ == "__main__":
    main()
