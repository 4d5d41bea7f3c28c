"""Activation-cache throughput, measured side by side in one run (against the cache's throughput targets).

(a) plain HF forward (sdpa), (b) emlab caching all layers per token to HDF5, (c) emlab
caching pooled features only, (d) the naive TransformerLens `run_with_cache` + `torch.save`;
each as tokens/s and as a ratio to (a). Also the raw disk write speed (for the GPU target
"(b) >= 0.8x disk limit") and peak RSS of a cache build at 1x and 10x the tokens.

    python benchmarks/cache_throughput.py                         # CPU, SmolLM2, real prompts
    python benchmarks/cache_throughput.py --random llama-3.2-1b --device cuda --seq 512 --n 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lab.cache import build_cache  # noqa: E402
from lab.data.formats import PromptSet, load_contrast, render  # noqa: E402
from lab.models.hooks import left_pad  # noqa: E402


def make_prompts(model, n: int, seq: int | None) -> PromptSet:
    if seq is None:  # real chat prompts (refusal + code-mode sets), repeated to n
        examples = (load_contrast("refusal") + load_contrast("code_mode"))
        examples = [examples[i % len(examples)] for i in range(n)]
        for i, ex in enumerate(examples):
            ex.id = f"{ex.id}-{i}"
        return render(examples, model.tokenizer)
    rng = np.random.default_rng(0)
    vocab = min(model.hf.config.vocab_size, 49152)
    tokens = [rng.integers(3, vocab, size=seq) for _ in range(n)]
    roles = [np.full(seq, 2, dtype=np.int8) for _ in range(n)]
    return PromptSet([f"r{i}" for i in range(n)], tokens, roles, np.full(n, seq), [None] * n, [""] * n, "", "synthetic",
                     [{} for _ in range(n)])


def sync(model):
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def plain_forward(model, prompts, batch_size):
    order = np.argsort(-prompts.lengths, kind="stable")
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            ids, mask, pos = (t.to(model.device) for t in left_pad([torch.from_numpy(prompts.tokens[j]) for j in idx],
                                                                   model.tokenizer.pad_token_id))
            model.hf(input_ids=ids, attention_mask=mask, position_ids=pos)
    sync(model)


def naive(model, prompts, batch_size, out_dir: Path):
    bridge = model.bridge
    order = np.argsort(-prompts.lengths, kind="stable")
    for b, i in enumerate(range(0, len(order), batch_size)):
        idx = order[i: i + batch_size]
        ids, mask, _ = (t.to(model.device) for t in left_pad([torch.from_numpy(prompts.tokens[j]) for j in idx],
                                                             model.tokenizer.pad_token_id))
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n.endswith("hook_resid_post"))
        torch.save({k: v for k, v in cache.items()}, out_dir / f"batch{b}.pt")
    sync(model)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def disk_write_speed(folder: Path, mb: int = 1024) -> float:
    buf = np.random.default_rng(0).integers(0, 255, size=mb << 20, dtype=np.uint8)
    path = folder / "disk_probe.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(buf.data)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    path.unlink()
    return (mb << 20) / dt


RSS_CHILD = """
import sys, json, resource, lab
sys.path.insert(0, sys.argv[4])
from benchmarks.cache_throughput import load, make_prompts
from lab.cache import build_cache
args = json.loads(sys.argv[1])
model = load(args)
prompts = make_prompts(model, int(sys.argv[2]), args["seq"])
build_cache(model, prompts, sys.argv[3], storage_dtype=args["storage"], batch_size=args["batch_size"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def load(args: dict):
    from lab.models import load_model, random_model

    if args["random"]:
        return random_model(args["random"], tokenizer_source=args["tokenizer_dir"] or "smollm2-135m-instruct",
                            dtype=args["dtype"], device=args["device"])
    return load_model(args["model"], dtype=args["dtype"], device=args["device"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--random", default=None, help="random-weight shape instead, e.g. llama-3.2-1b")
    parser.add_argument("--tokenizer-dir", default=None, help="tokenizer folder for --random (default: SmolLM2's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="model compute dtype")
    parser.add_argument("--storage", default="float16", help="cache storage dtype")
    parser.add_argument("--n", type=int, default=256, help="number of prompts")
    parser.add_argument("--seq", type=int, default=None, help="synthetic prompt length (default: real prompts)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-n", type=int, default=32, help="prompts for the 1x RSS build (10x is also run)")
    parser.add_argument("--json", default=None, help="also write results here")
    args = vars(parser.parse_args())
    model = load(args)
    prompts = make_prompts(model, args["n"], args["seq"])
    n_tok = int(prompts.lengths.sum())
    print(f"model {model.name} on {model.device} ({model.dtype}), {len(prompts)} prompts, {n_tok} tokens, "
          f"batch {args['batch_size']}, storage {args['storage']}, torch threads {torch.get_num_threads()}")
    work = Path(tempfile.mkdtemp(prefix="emlab-bench-"))
    plain_forward(model, make_prompts(model, args["batch_size"], args["seq"]), args["batch_size"])  # warm-up

    def cache(mode):
        def run():
            shutil.rmtree(work / mode, ignore_errors=True)
            build_cache(model, prompts, work / mode, storage_dtype=args["storage"], mode=mode,
                        batch_size=args["batch_size"], max_batch_tokens=1 << 20)
            sync(model)
        return run

    def naive_run():
        shutil.rmtree(work / "naive", ignore_errors=True)
        (work / "naive").mkdir()
        naive(model, prompts, args["batch_size"], work / "naive")

    results = {}
    for name, fn in [("a_forward", lambda: plain_forward(model, prompts, args["batch_size"])),
                     ("b_cache_tokens", cache("tokens")), ("c_cache_pooled", cache("pooled")),
                     ("a_forward_again", lambda: plain_forward(model, prompts, args["batch_size"])),
                     ("d_naive", naive_run)]:
        results[name] = n_tok / timed(fn, args["repeats"])
    forward = max(results["a_forward"], results["a_forward_again"])  # fastest forward: conservative ratios
    tokens_file = next((work / "tokens").glob("*.h5"))
    disk = disk_write_speed(work)
    bytes_per_token = tokens_file.stat().st_size / n_tok
    print(f"\n{'what':38s} {'tok/s':>10s} {'x forward':>10s}")
    labels = {"a_forward": "(a) HF forward, sdpa", "b_cache_tokens": "(b) emlab cache, all layers x tokens",
              "c_cache_pooled": "(c) emlab cache, pooled only", "d_naive": "(d) naive run_with_cache + torch.save"}
    for key, label in labels.items():
        value = forward if key == "a_forward" else results[key]
        print(f"{label:38s} {value:10.0f} {value / forward:10.2f}")
    print(f"(a) first/second forward pass: {results['a_forward']:.0f} / {results['a_forward_again']:.0f} tok/s")
    print(f"(b) / (d): {results['b_cache_tokens'] / results['d_naive']:.2f}x")
    disk_limit = disk / bytes_per_token
    print(f"disk write {disk / 2**30:.2f} GiB/s -> limit {disk_limit:.0f} tok/s at {bytes_per_token:.0f} B/token; "
          f"(b) = {results['b_cache_tokens'] / disk_limit:.2f}x of it")
    rss = {}
    for mult in (1, 10):
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, json.dumps(args), str(args["rss_n"] * mult),
                              str(work / f"rss{mult}"), str(Path(__file__).resolve().parents[1])],
                             capture_output=True, text=True)
        rss[mult] = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else float("nan")
        if out.returncode:
            print(out.stderr[-2000:])
    print(f"peak RSS of a cache build: {rss[1]:.0f} MiB at {args['rss_n']} prompts, {rss[10]:.0f} MiB at "
          f"{10 * args['rss_n']} prompts (ratio {rss[10] / rss[1]:.2f})")
    if args["json"]:
        Path(args["json"]).write_text(json.dumps({**results, "disk_Bps": disk, "rss_mib": rss, "n_tokens": n_tok}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
