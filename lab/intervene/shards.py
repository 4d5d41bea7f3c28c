"""Data-parallel work, one process per GPU under torchrun: activation caches and answer sampling.

    torchrun --nproc-per-node 2 -m lab.intervene.shards --model DIR --data refusal --cache-dir cache   # a cache
    torchrun --nproc-per-node 2 -m experiments.em_rates --model DIR --device cuda              # answers
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 -m lab.intervene.shards ...      # across nodes

Both split work the same way: every rank computes the plan one process would run (the cache's
`batch_plan`, the answers' `AnswerRun.plan`) and takes the batches `b` with `b % world == rank`.
Every batch is therefore computed with the same rows, padding and random stream as in one
process. With the same kernels too (the same device and threads per process) the result is the
file one process writes: tested on CPU, two one-thread ranks against one one-thread process
(identical arrays, identical answer files). Another thread count or device may round differently
in the last bit.

Caches: rank 0 creates the final file under the key lock, laid out by the global plan, with each
activation dataset allocated as one contiguous block, and sends every rank the blocks' byte
offsets. Each rank writes its batches' rows straight to their bytes in that file (`pwrite`, never
through HDF5, whose private buffers could overwrite another rank's rows); when every rank is
done, rank 0 marks the file complete and renames it into place. No shard files, no merge, so
two GPUs cost no serial step. With one rank this is `lab.cache.build_cache` itself.

Answers: each rank appends its rows to its own part file (`<out>.part<rank>`, so a killed run
resumes) and sends them to rank 0, which appends them to the answer file in plan order, as one
process writes them, and removes the parts. On the continuous path a rank runs all of its
batches' jobs through one set of slots; rows draw their own noise (lab.intervene.sampling_noise), so
which rank or slot ran a row does not change its answer.

The ranks exchange only small objects (offsets, rows, barriers) over a gloo process group, so
the same code runs on CPU (the tests) and GPUs. Across nodes the cache and output folders must
be one file system that every node sees.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from lab.cache import ActivationCache, CacheRequest, batch_plan, build_cache, cache_key, cache_path
from lab.cache.build import _create_file, _fill
from lab.data import ChatExample, PromptSet
from lab.core.errors import BadInput, CacheError
from lab.intervene.answers_file import open_for_append
from lab.intervene.generate import AnswerRun, GenerationConfig, generate_answers
from lab.models.hooks import validate_hooks
from lab.core.io import key_lock
from lab.models import ModelLike


@dataclass(frozen=True)
class Ranks:
    """This process's place among the launcher's processes (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        rank = int(os.environ.get("RANK", 0))
        return cls(rank, int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", rank)))

    def device(self, requested: str) -> str:
        """The device this rank runs on: its own GPU (cuda:LOCAL_RANK) when `requested` is cuda or auto."""
        if self.world == 1:
            return requested
        if requested.startswith("cuda:"):
            raise BadInput(f"--device {requested} names one GPU; under torchrun use --device cuda (rank r takes cuda:r)")
        import torch

        if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
            torch.cuda.set_device(self.local)  # streams, graphs and NCCL of this process default to its GPU
            return f"cuda:{self.local}"
        return requested

    def mine(self, n_batches: int) -> range:
        """Indices of the plan's batches this rank computes."""
        return range(self.rank, n_batches, self.world)

    def barrier(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if self.world > 1:
            _group().barrier()


def _group() -> Any:
    """torch.distributed, with the gloo group started (small CPU objects only; works with or without GPUs)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=12))  # a slow rank is not a dead one
    return dist


def _broadcast(obj: Any, ranks: Ranks) -> Any:
    box = [obj]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def _gather(obj: Any, ranks: Ranks) -> list | None:
    out = [None] * ranks.world if ranks.rank == 0 else None
    _group().gather_object(obj, out, dst=0)
    return out


# --------------------------------------------------------------------------- caches


def build_cache_parallel(model: ModelLike, prompts: PromptSet, cache_dir: str | Path, hooks: list[str] | None = None,
                         storage_dtype: str = "float32", mode: str = "tokens", batch_size: int = 16,
                         max_batch_tokens: int = 8192, ranks: Ranks | None = None,
                         on_batch: Callable[[int, int, int], None] | None = None) -> ActivationCache:
    """The cache `build_cache` would write, computed by every rank of the launch (each returns it)."""
    ranks = ranks or Ranks.from_env()
    if ranks.world == 1:
        return build_cache(model, prompts, cache_dir, hooks, storage_dtype, mode, batch_size, max_batch_tokens,
                           on_batch=on_batch)
    hooks = validate_hooks(hooks or [f"blocks.{L}.hook_resid_post" for L in range(model.n_layers)], model)
    if int(prompts.lengths.max()) > model.n_ctx:
        raise BadInput(f"an example is longer than the model's context ({model.n_ctx})")
    request = CacheRequest(tuple(hooks), storage_dtype, mode)
    key = cache_key(model.fingerprint, prompts, request)
    final = cache_path(cache_dir, key)
    partial = final.with_suffix(".h5.parallel")  # not `.h5.partial`: a one-process build must never resume it
    plan = batch_plan(prompts.lengths, batch_size, max_batch_tokens)
    with ExitStack() as stack:
        layout = None
        if ranks.rank == 0:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            if not final.exists():
                stack.enter_context(key_lock(final.with_suffix(".h5.lock")))
                stack.callback(partial.unlink, missing_ok=True)  # on failure; renamed away on success
                if not final.exists():
                    layout = _create_layout(partial, key, model, prompts, request, plan)
        layout = _broadcast(layout, ranks)
        if layout is not None:
            mine = [plan[b] for b in ranks.mine(len(plan))]  # empty where ranks outnumber batches
            if mine:
                sidecar = partial.with_suffix(f".rank{ranks.rank}.json")
                raw = _RawFile(partial, layout, mode, _pooled_rows(plan, mine))
                try:
                    _fill(raw, model, prompts, request, mine, 0, sidecar, key, on_batch)
                finally:
                    raw.close()
                    sidecar.unlink(missing_ok=True)
            ranks.barrier()  # every rank's rows are in the file
            if ranks.rank == 0:
                with h5py.File(partial, "r+") as h5:
                    h5.attrs["complete"] = True
                os.replace(partial, final)
        ranks.barrier()  # the file is in place before anyone opens it
    return ActivationCache(final)


def _create_layout(partial: Path, key: str, model: ModelLike, prompts: PromptSet, request: CacheRequest,
                   plan: list[np.ndarray]) -> dict:
    """Create the file (global layout) and return where each activation block lives in it."""
    h5 = _create_file(partial, key, model, prompts, request, plan)
    try:
        layout: dict = {"starts": h5["starts"][:]}
        prefix = "acts" if request.mode == "tokens" else "pooled"
        for hook in request.hooks:
            ds = h5[f"{prefix}/{hook}"]
            offset = ds.id.get_offset()
            if offset is None or ds.chunks is not None:
                raise CacheError(f"{ds.name} is not one contiguous block; cannot write it from several processes")
            layout[f"{prefix}/{hook}"] = (int(offset), ds.dtype.itemsize * int(np.prod(ds.shape[1:])))
    finally:
        h5.close()
    return layout


def _pooled_rows(plan: list[np.ndarray], mine: list[np.ndarray]) -> dict[int, int]:
    """Pooled mode writes a batch at its row in the plan it is given (this rank's): map to the global row."""
    where = {id(b): row for b, row in zip(plan, np.cumsum([0] + [len(b) for b in plan]))}
    local = np.cumsum([0] + [len(b) for b in mine])
    return {int(local[k]): int(where[id(b)]) for k, b in enumerate(mine)}


class _RawFile:
    """The part of an h5py file `lab.cache.build._fill` writes through, with rows going straight to
    their bytes: `raw[name][start:stop] = rows` is one pwrite at the block's offset."""

    def __init__(self, path: Path, layout: dict, mode: str, pooled_rows: dict[int, int]):
        self.fd = os.open(path, os.O_WRONLY)
        self.layout, self.pooled_rows = layout, pooled_rows if mode == "pooled" else None
        self.attrs = {"mode": mode}

    def __getitem__(self, name: str) -> Any:
        return self.layout["starts"] if name == "starts" else _RawBlock(self, *self.layout[name])

    def flush(self) -> None:  # writes are already the file's (pwrite); nothing is buffered here
        pass

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class _RawBlock:
    file: _RawFile
    offset: int
    row_bytes: int

    def __setitem__(self, rows: slice, array: np.ndarray) -> None:
        start = rows.start if self.file.pooled_rows is None else self.file.pooled_rows[rows.start]
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        if len(data) != (rows.stop - rows.start) * self.row_bytes:
            raise CacheError(f"rows of {len(data)} bytes do not fit {rows.stop - rows.start} rows of {self.row_bytes}")
        at = self.offset + start * self.row_bytes
        while len(data):
            n = os.pwrite(self.file.fd, data, at)
            data, at = data[n:], at + n


# --------------------------------------------------------------------------- answers


def sample_answers(model: ModelLike, examples: list[ChatExample], config: GenerationConfig, out_path: str | Path,
                   interventions: tuple = (), label: str = "", on_batch: Callable[[int, int], None] | None = None,
                   ranks: Ranks | None = None) -> list[dict] | None:
    """`generate_answers` over every rank of the launch: the same rows in the same `out_path`.

    Rank 0 returns the rows (example order, as `generate_answers`); the other ranks return None.
    """
    ranks = ranks or Ranks.from_env()
    if ranks.world == 1:
        return generate_answers(model, examples, config, interventions, out_path, on_batch, label)
    out_path = Path(out_path)
    parts = [out_path.with_name(f"{out_path.name}.part{r}") for r in range(ranks.world)]
    run = AnswerRun(model, examples, config, interventions, label)
    in_file = run.done(out_path)
    done = {**run.done(*parts), **in_file}  # rows of an interrupted run count as done
    ranks.barrier()  # every rank has read the same files before any rank appends to its part
    plan = run.plan(done)
    mine, total, finished = [], sum(len(plan[b]) for b in ranks.mine(len(plan))), 0
    with open_for_append(parts[ranks.rank]) as part:
        # static paths: this rank's batches one by one; continuous: all of their jobs through one set of slots
        for rows in run.stream([plan[b] for b in ranks.mine(len(plan))]):
            part.write("".join(json.dumps(r) + "\n" for r in rows))
            part.flush()
            mine.extend(rows)
            finished += len(rows)
            if on_batch:
                on_batch(finished, total)
    gathered = _gather(mine, ranks)
    result = None
    if ranks.rank == 0:
        carried = [row for k, row in done.items() if k not in in_file]
        position = {(run.examples[i].id, s): n for n, (i, s) in enumerate(j for batch in plan for j in batch)}
        new = sorted((row for rows in gathered for row in rows), key=lambda r: position[(r["id"], r["sample"])])
        with open_for_append(out_path) as f:
            f.write("".join(json.dumps(r) + "\n" for r in carried + new))
        run.settle(out_path)
        for p in parts:
            p.unlink(missing_ok=True)
        result = run.ordered(list(in_file.values()) + carried + new)
    ranks.barrier()
    return result


# --------------------------------------------------------------------------- command line


def main(argv=None) -> None:
    """`torchrun -m lab.intervene.shards`: a cache over the launch's processes (RANK, WORLD_SIZE, LOCAL_RANK)."""
    from lab.core.console import console, user_errors
    from lab.data import load_examples, render
    from lab.models import LabModel

    ap = argparse.ArgumentParser(description="data-parallel activation cache (run under torchrun)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--storage", default="float16")
    ap.add_argument("--mode", default="tokens")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto", help="cuda (rank r on cuda:r), cpu, or auto (cuda if present)")
    ap.add_argument("--forward-batch-size", type=int, default=16, help="examples per forward")
    ap.add_argument("--report", default="", help="write this rank's timings as JSON to REPORT.<rank>")
    args = ap.parse_args(argv)
    ranks = Ranks.from_env()
    with user_errors():
        model = LabModel(args.model, dtype=args.dtype, device=ranks.device(args.device))
        prompts = render(load_examples(args.data), model.tokenizer)
        model.hf  # load before the clock starts: the report times caching, not loading
        ranks.barrier()
        start = time.perf_counter()
        cache = build_cache_parallel(model, prompts, args.cache_dir, storage_dtype=args.storage, mode=args.mode,
                                     batch_size=args.forward_batch_size, ranks=ranks)
        timing = {"rank": ranks.rank, "world": ranks.world, "cache_s": time.perf_counter() - start,
                  "tokens": int(cache.attrs["n_tokens"])}
        if ranks.rank == 0:
            console.print(f"[green]cache[/] {cache.path}  {cache!r}")
        if args.report:
            Path(f"{args.report}.{ranks.rank}").write_text(json.dumps(timing))


if __name__ == "__main__":
    main()
