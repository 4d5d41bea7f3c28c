"""Data-parallel pooled caching and answer sampling: one GPU vs all of them, side by side in one launch.

    torchrun --standalone --nproc-per-node 2 benchmarks/data_parallel.py --shape llama-3.1-8b --folder /tmp/m8b
    torchrun --standalone --nproc-per-node 2 benchmarks/data_parallel.py --shape tiny-llama --device cpu \\
        --prompts 32 --samples 1 --new-tokens 4 --batch 8                       # CPU dry run (gloo)

Rank 0 writes a random-weight folder of the shape (bf16 safetensors, SmolLM2's tokenizer) unless
`--folder` holds one; every rank loads it once, onto its own GPU. Then, with barriers between,
timed on rank 0's clock (loads excluded):

1. warm-up on every rank: one batch of the sampling shape (graph capture) and a small cache;
2. cache, 1 GPU: rank 0 alone builds the pooled bf16 cache of `--prompts` synthetic chats
   (`lab.intervene.shards.build_cache_parallel` with one rank, which is `build_cache`);
3. cache, N GPUs: every rank, into another folder (rank 0's clock runs until the file is in place);
4. answers, 1 GPU: rank 0 alone samples `--samples` answers to each of the 48 shipped general
   questions (temperature 1, `--new-tokens`, batch `--batch`: em_eval's path, `sample_answers`);
5. answers, N GPUs: every rank.

Prints seconds, throughput, the speed-ups, and whether the N-GPU cache and answer file equal the
one-GPU ones (they should be identical: same batches, same kernels, same seeds). Nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch)
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.gpu_study import synthetic_chats  # noqa: E402
from lab.data.formats import render  # noqa: E402
from lab.intervene.decode import LENGTH_BUCKET  # noqa: E402
from lab.em.answers import question_examples, shipped_questions  # noqa: E402
from lab.intervene.generate import GenerationConfig, generate_answers  # noqa: E402
from lab.models import LabModel, random_folder  # noqa: E402
from lab.intervene.shards import Ranks, build_cache_parallel, sample_answers  # noqa: E402

T0 = time.time()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(ranks: Ranks, fn) -> float:
    """Seconds on rank 0's clock from a common start (a barrier) to `fn`'s return."""
    ranks.barrier()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def same_cache(a: Path, b: Path) -> bool:
    """Every dataset and attribute equal (activation blocks: first, middle and last hook)."""
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        hooks = json.loads(x.attrs["hooks"])
        names = [n for n in x if not isinstance(x[n], h5py.Group)]
        names += [f"pooled/{h}" if "pooled" in x else f"acts/{h}" for h in (hooks[0], hooks[len(hooks) // 2], hooks[-1])]
        same = all(np.array_equal(x[n][:], y[n][:]) for n in names)
        return same and {k: str(v) for k, v in x.attrs.items()} == {k: str(v) for k, v in y.attrs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer folder or registered model")
    ap.add_argument("--folder", default="/tmp/emlab-dp-model")
    ap.add_argument("--work", default="/tmp/emlab-dp-work")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", type=int, default=2048, help="synthetic chats to cache")
    ap.add_argument("--samples", type=int, default=8, help="answers per general question")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=float, default=1e9, help="seconds after which no new part starts")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    ranks = Ranks.from_env()
    work = Path(args.work)
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if ranks.rank == 0:
        t = time.time()
        random_folder(args.shape, args.folder, args.tokenizer, dtype, device=ranks.device(args.device))
        print(f"folder {args.folder} ready in {time.time() - t:.1f} s", flush=True)
        work.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    model = LabModel(args.folder, dtype=dtype, device=ranks.device(args.device))
    t = time.time()
    model.hf
    load_s = time.time() - t
    one, n = Ranks(), ranks.world
    record: dict = {"shape": args.shape, "gpus": n, "device": str(model.device), "dtype": dtype, "load_s": round(load_s, 1)}

    prompts = render(synthetic_chats(args.prompts), model.tokenizer)
    tokens = int(prompts.lengths.sum())
    questions = question_examples(shipped_questions(), system_prompt=GenerationConfig().system_prompt)
    gen = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0, samples=args.samples, seed=0,
                           batch_size=args.batch)
    left = lambda: args.budget - (time.time() - T0)  # noqa: E731
    kw = dict(storage_dtype="bfloat16", mode="pooled", batch_size=32)

    # 1. warm-up on every rank (not timed): kernels, allocator, and a captured decode graph for every
    # prompt-width bucket the timed batches will use (one full batch of one question per bucket)
    warm = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0, samples=args.batch, batch_size=args.batch)
    widths = {}
    for q, width in zip(questions, render(questions, model.tokenizer, gen.system_prompt).lengths):
        widths.setdefault(-(-int(width) // LENGTH_BUCKET), q)
    for q in widths.values():
        generate_answers(model, [q], warm)
    build_cache_parallel(model, render(synthetic_chats(64), model.tokenizer), work / f"warm-{ranks.rank}",
                         ranks=one, **kw)
    ranks.barrier()

    def part(name: str, fn) -> float | None:
        go = ranks.world == 1 or _all_agree(left() > 30, ranks)
        if not go:
            record[name] = "not started (time budget)"
            return None
        s = timed(ranks, fn)
        record[name] = round(s, 2)
        if ranks.rank == 0:
            print(f"{name}: {s:.2f} s", flush=True)
        return s

    alone = lambda fn: (lambda: fn() if ranks.rank == 0 else None)  # noqa: E731
    c1 = part("cache 1 GPU s", alone(lambda: build_cache_parallel(model, prompts, work / "cache-1", ranks=one, **kw)))
    cn = part(f"cache {n} GPU s", lambda: build_cache_parallel(model, prompts, work / f"cache-{n}", ranks=ranks, **kw))
    a1 = part("answers 1 GPU s", alone(lambda: sample_answers(model, questions, gen, work / "answers-1.jsonl",
                                                               ranks=one)))
    an = part(f"answers {n} GPU s", lambda: sample_answers(model, questions, gen, work / f"answers-{n}.jsonl",
                                                            ranks=ranks))
    if ranks.rank == 0:
        rows = len(questions) * args.samples
        record.update(cache_tokens=tokens, answers=rows, new_tokens_max=args.new_tokens)
        if c1 and cn:
            files = [next((work / f"cache-{k}").glob("*.h5")) for k in (1, n)]
            record.update({"cache 1 GPU tok/s": round(tokens / c1), f"cache {n} GPU tok/s": round(tokens / cn),
                           "cache speedup": round(c1 / cn, 2), "cache files equal": same_cache(*files)})
        if a1 and an:
            texts = [(work / f"answers-{k}.jsonl").read_text() for k in (1, n)]
            record.update({"answers 1 GPU new tok/s (max)": round(rows * args.new_tokens / a1),
                           f"answers {n} GPU new tok/s (max)": round(rows * args.new_tokens / an),
                           "answers speedup": round(a1 / an, 2), "answer files equal": texts[0] == texts[1]})
        print(json.dumps(record, indent=1), flush=True)
        print(f"data-parallel, {args.shape}, {n} GPUs vs 1: pooled caching {record.get('cache speedup', '-')}x "
              f"(files equal: {record.get('cache files equal', '-')}), answer sampling {record.get('answers speedup', '-')}x "
              f"(files equal: {record.get('answer files equal', '-')}); total {time.time() - T0:.0f} s", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=1))
    ranks.barrier()


def _all_agree(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's decision, for every rank (so no rank waits at a barrier the others skip)."""
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


if __name__ == "__main__":
    main()
