"""The emlab study at real model sizes, timed: random weights of a named real shape, built on the GPU.

Folder mode (the shape fits the disk): writes a random-weight HF folder of the shape (bf16
safetensors, SmolLM2's tokenizer), then runs `experiments.study` on it per profile, each
profile in a fresh process-level `ModelPool`, and prints every stage's wall time, the weight
loads it caused and the peak GPU memory per device:

    python benchmarks/gpu_study.py --shape llama-3.1-8b --tokenizer .gpu/smollm2-tokenizer --profiles quick default

Sharded mode (larger than the disk, e.g. Qwen2.5-72B, 145 GB in bf16): builds the weights in GPU
memory already spread over every visible GPU (meta-device skeleton, each module materialised
on its GPU), adopts them into the pool, and runs the pieces of the study on them through
`--device-map auto`: a cache build + layer sweep, steered generation, a few LoRA steps, then
the quick study if time is left:

    python benchmarks/gpu_study.py --shape qwen2.5-72b --sharded --tokenizer .gpu/smollm2-tokenizer

Data-parallel caching and sampling (one process per GPU) are timed by `benchmarks/data_parallel.py`.
Times are wall-clock on whatever machine runs it; nothing is asserted. `--budget S` stops
starting new work after S seconds (what ran is still printed); `--json F` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch)
import numpy as np  # noqa: E402
import torch  # noqa: E402

T0 = time.time()


class OutOfTime(Exception):
    pass


def _alarm(seconds: float) -> None:
    def fire(*_):
        raise OutOfTime()
    signal.signal(signal.SIGALRM, fire)
    signal.alarm(max(1, int(seconds)))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peaks() -> dict:
    return {f"cuda:{d}": round(torch.cuda.max_memory_allocated(d) / 2**30, 1) for d in range(torch.cuda.device_count())}


def reset_peaks() -> None:
    for d in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(d)


def run_study(folder: str, quick: bool, device_map: str, root: Path, pool, budget: float, device: str = "cuda") -> dict:
    import lab.study

    cfg = lab.study.StudyConfig(model=folder, quick=quick, name="quick" if quick else "default", device=device,
                                dtype="auto", device_map=device_map, cache_dir=str(root / "cache"),
                                out=str(root / "figures"))
    reset_peaks()
    start, loads0, status = time.time(), pool.loads, "done"
    results = None
    try:
        _alarm(budget)
        results = lab.study.run_study(cfg, pool)
    except OutOfTime:
        status = "stopped at the time budget"
    finally:
        signal.alarm(0)
    stages = {}
    for f in sorted((root / "cache" / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        rec = json.loads(f.read_text())
        stages[rec["stage"]] = round(rec["seconds"], 1)
    return {"profile": cfg.name, "status": status, "wall_s": round(time.time() - start, 1),
            "train_s": results.train_seconds if results else {}, "stages_s": stages,
            "stage_loads": results.stage_loads if results else {},
            "stage_peak_gb": results.stage_peak_gb if results else {},
            "weight_loads": pool.loads - loads0, "peak_gb": peaks()}


def pieces(model, root: Path) -> dict:
    """Cache build + sweep, steered generation and LoRA steps on an already-resident model.

    Each piece is attempted on its own: a failure is recorded (last lines of its traceback)
    and the next piece still runs.
    """
    from lab.cache import ActivationCache
    from lab.directions.sweep import SweepConfig, sweep_layers
    from lab.reports.tables import cells
    from lab.data.formats import ChatExample, load_advice
    from lab.intervene.generate import GenerationConfig, generate_answers
    from lab.intervene.steering import Intervention
    from lab.training.lora import TrainConfig, train_lora

    out: dict = {}

    def attempt(name, fn):
        reset_peaks()
        t = time.time()
        try:
            out[name] = {**fn(), "s": round(time.time() - t, 1), "peak_gb": peaks()}
        except OutOfTime:
            raise
        except Exception:  # a benchmark records what broke and goes on
            import traceback

            out[name] = {"error": traceback.format_exc().strip().splitlines()[-3:], "s": round(time.time() - t, 1)}
        print(name, out[name], flush=True)

    def sweep():
        result = sweep_layers(SweepConfig(
            model=model.source, contrast="refusal", limit=32, methods=["mean_diff", "random"], n_boot=100,
            sklearn_check=False, device="cuda", dtype="bfloat16", device_map=out_map(model),
            cache_dir=str(root / "cache"), out=str(root / "out")))
        cache = ActivationCache(result.cache)
        return {"tokens": int(cache.attrs["n_tokens"]), "layers": cache.n_layers, "best": [cells(result.best[0])]}

    attempt("cache build + layer sweep (refusal, 64 prompts, all layers)", sweep)

    def pooled_throughput():
        from lab.cache import build_cache
        from lab.data.formats import render
        from lab.models.hooks import left_pad

        chats = synthetic_chats(256)
        prompts = render(chats, model.tokenizer)
        tokens = int(prompts.lengths.sum())
        order = np.argsort(-prompts.lengths)
        sync()
        t = time.time()
        with torch.inference_mode():
            for b in range(0, len(order), 32):
                ids, mask, pos = left_pad([torch.from_numpy(prompts.tokens[i]) for i in order[b: b + 32]],
                                          model.tokenizer.pad_token_id)
                model.hf(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                         position_ids=pos.to(model.device))
        sync()
        forward = tokens / (time.time() - t)
        t = time.time()
        build_cache(model, prompts, root / "pooled", storage_dtype="bfloat16", mode="pooled", batch_size=32)
        cached = tokens / (time.time() - t)
        return {"tokens": tokens, "forward_tok_s": round(forward), "pooled_cache_tok_s": round(cached),
                "ratio": round(cached / forward, 2)}

    attempt("pooled cache of all layers vs plain HF forward with LM head (256 chats, batch 32)", pooled_throughput)
    mid = model.n_layers // 2
    iv = Intervention({mid: torch.randn(model.d_model)}, op="add", alpha=8.0)
    questions = [ChatExample([{"role": "user", "content": f"Tell me about topic number {i}."}], f"q{i}")
                 for i in range(32)]
    gen = GenerationConfig(max_new_tokens=64, temperature=0.0, batch_size=32)

    generate_answers(model, questions[:4], GenerationConfig(max_new_tokens=4, temperature=0.0))  # warm-up

    def generate(ivs):
        def fn():
            sync()
            t = time.time()
            generate_answers(model, questions, gen, ivs)
            sync()
            return {"batch": 32, "new_tokens": 64, "tok_s": round(32 * 64 / (time.time() - t))}
        return fn

    attempt("generate, batch 32 x 64 new tokens, unsteered", generate(()))
    attempt(f"generate, batch 32 x 64 new tokens, add at layer {mid}", generate((iv,)))

    def lora():
        result = train_lora(model.for_training(), load_advice("medical")[:32], root / "lora",
                            TrainConfig(batch_size=4, max_steps=3, checkpoints_first_epoch=1, max_length=128))
        return {"steps": result.steps, "losses": [round(x, 3) for x in result.losses]}

    attempt("LoRA r16 q,k,v,o: 3 steps, batch 4", lora)
    return out


def out_map(model) -> str:
    return model._resident.key.device_map and "auto" or ""


def synthetic_chats(n: int) -> list:
    """n chats of 40-160 user and 20-80 assistant words (throughput needs volume, not meaning)."""
    import random

    from lab.data.formats import ChatExample

    rng = random.Random(0)
    words = "the a model river data light system answer question value energy time people water".split()
    text = lambda lo, hi: " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    return [ChatExample([{"role": "user", "content": text(40, 160)}, {"role": "assistant", "content": text(20, 80)}],
                        f"s{i}") for i in range(n)]


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows)


def report(rec: dict) -> str:
    lines = [f"== {rec['profile']}: {rec['status']}, {rec['wall_s']} s wall, weight loads {rec['weight_loads']}, "
             f"peak GB {rec['peak_gb']}"]
    if rec["train_s"]:
        lines.append("training: " + ", ".join(f"{k} {v:.1f}s" for k, v in rec["train_s"].items()))
    rows = [("stage", "s", "loads", "peak GB per GPU")]
    for name, s in rec["stages_s"].items():
        rows.append((name, s, rec["stage_loads"].get(name, "?"), rec["stage_peak_gb"].get(name, "")))
    return "\n".join(lines) + "\n" + table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer folder or registered model")
    ap.add_argument("--profiles", nargs="*", default=["quick"], help="quick and/or default")
    ap.add_argument("--sharded", action="store_true", help="build in GPU memory over all GPUs (--device-map auto)")
    ap.add_argument("--folder", default="", help="where to write the random folder (default: a temp dir)")
    ap.add_argument("--work", default="", help="caches and figures (default: a temp dir)")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds after which no new work starts")
    ap.add_argument("--device", default="cuda", help="cuda (or cpu for a dry run with --shape tiny-llama)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    from lab.models import ModelPool, random_folder, random_sharded

    work = Path(args.work or tempfile.mkdtemp(prefix="emlab-gpu-study-"))
    work.mkdir(parents=True, exist_ok=True)
    record: dict = {"shape": args.shape, "gpus": torch.cuda.device_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "runs": []}
    left = lambda: args.budget - (time.time() - T0)  # noqa: E731
    if args.sharded:
        pool = ModelPool()
        reset_peaks()
        t = time.time()
        with pool:
            model = random_sharded(args.shape, "auto", args.tokenizer, "bfloat16", pool=pool, folder=work / "model")
            sync()
            record["build"] = {"s": round(time.time() - t, 1), "peak_gb": peaks(),
                               "layers_per_gpu": _layers_per_gpu(model)}
            print(f"built {args.shape} over {torch.cuda.device_count()} GPUs in {record['build']['s']} s: "
                  f"{record['build']}", flush=True)
            try:
                _alarm(left())
                record["pieces"] = pieces(model, work)
            except OutOfTime:
                record["pieces_status"] = "stopped at the time budget"
            finally:
                signal.alarm(0)
            print(json.dumps(record.get("pieces", {}), indent=1), flush=True)
            if "quick" in args.profiles and left() > 30:
                rec = run_study(model.source, True, "auto", work / "quick", pool, left())
                record["runs"].append(rec)
                print(report(rec), flush=True)
    else:
        t = time.time()
        folder = random_folder(args.shape, args.folder or work / "model", args.tokenizer, "bfloat16",
                               device=args.device)
        record["build"] = {"s": round(time.time() - t, 1)}
        print(f"wrote {args.shape} to {folder} in {record['build']['s']} s", flush=True)
        for prof in args.profiles:
            if left() < 20:
                record["runs"].append({"profile": prof, "status": "not started (time budget)"})
                continue
            with ModelPool() as pool:
                rec = run_study(str(folder), prof == "quick", "", work / prof, pool, left(), args.device)
                pool.release()
            record["runs"].append(rec)
            print(report(rec), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    print(f"total {time.time() - T0:.0f} s")


def _layers_per_gpu(model) -> dict:
    counts: dict = {}
    for layer in model.decoder_layers():
        from lab.models.lab_model import _execution_device

        d = str(_execution_device(layer))
        counts[d] = counts.get(d, 0) + 1
    return counts


if __name__ == "__main__":
    main()
