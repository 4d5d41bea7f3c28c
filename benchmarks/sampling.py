"""Sampling at the protocol's volume: today's static batches, HF generate and continuous batching, side by side.

The workload is the EM papers' protocol: questions x samples = `--answers` answers (400), at most
`--max-new-tokens` (600) new tokens each, temperature 1. Answer lengths are realistic: on real
weights every row stops at a real EOS of the model's generation config; on random weights (whose
EOS is noise) each row stops at a length drawn (seeded) from answer lengths of a real run:
`sampling_lengths.json` holds SmolLM2-135M-Instruct's on the EM questions at temperature 1, or pass
`--lengths FILE` (a JSON list). A static batch costs what its longest row costs (it runs until
that row ends), so the static paths run each batch to its longest drawn length; the continuous
path stops each row at its own.

Paths, each in one run of this script, interleaved over `--repeats`:
  today       static batches of `--batch-size` (16), longest prompts first, lab.intervene.decode's fast path
              (static KV cache, CUDA graph), per-row seeded noise (`decode="fast"`)
  hf          the same batches through `model.hf.generate` (`decode="hf"`)
  continuous  lab.intervene.sampler: `--max-batch` slots (default: as many as memory holds on CUDA, 16 on CPU)
              refilled as rows end (`decode="continuous"`); graph capture is inside the timing
Conditions: unsteered, steered (add 4*v at the middle layer) and ablated (v projected out at every
layer) for the paths in `--steer-paths` (default: continuous).

Printed per path and condition: answer tokens (up to and including the stop token) per second,
answers per second, the ratio to today's path, the ratio to the same path unsteered, peak GPU
memory, and the share of the weight-bandwidth limit at the path's rows per step (rows x bandwidth
/ weight bytes: every weight read once per step; KV reads come on top). `same as today` counts the
continuous answers identical to today's path's (the same per-row noise: equal up to rounding).

    python benchmarks/sampling.py --answers 32 --max-new-tokens 64                              # CPU, SmolLM2 fp32
    python benchmarks/sampling.py --model qwen2.5-coder-0.5b-instruct --device cuda --dtype bfloat16
    python benchmarks/sampling.py --random llama-3.1-8b --tokenizer-dir .gpu/smollm2-tokenizer --device cuda \\
        --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lab.intervene.decode import Sampling, fast_generate, hf_generate  # noqa: E402
from lab.em.answers import question_examples, shipped_questions  # noqa: E402
from lab.intervene.generate import AnswerRun, GenerationConfig  # noqa: E402
from lab.models.hooks import left_pad  # noqa: E402
from lab.intervene.sampler import ContinuousSampler, stop_ids  # noqa: E402
from lab.intervene.steering import Intervention  # noqa: E402

LENGTHS = Path(__file__).with_name("sampling_lengths.json")
PATHS = {"today": "fast", "hf": "hf", "continuous": "continuous"}  # benchmark name -> GenerationConfig.decode
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def load(args):
    from lab import models

    if args.random:
        return models.random_model(args.random, tokenizer_source=args.tokenizer_dir or "smollm2-135m-instruct",
                                   dtype=args.dtype, device=args.device)
    return models.load_model(args.model, dtype=args.dtype, device=args.device)


def workload(model, args):
    """The examples and samples per example, and the `--answers` jobs (example-major) to run."""
    if args.questions == "general":
        questions = shipped_questions()
    else:
        from lab.data import read_questions_yaml

        questions = read_questions_yaml(args.questions)
    questions = questions[: args.limit_questions or None]
    examples = question_examples(questions, system_prompt=GenerationConfig().system_prompt)
    samples = math.ceil(args.answers / len(examples))
    jobs = [(i, s) for i in range(len(examples)) for s in range(samples)][: args.answers]
    return examples, samples, jobs


def row_limits(jobs, args) -> dict | None:
    """Random weights: each job's answer length, drawn (seed 0) from a real run's lengths."""
    if not args.random:
        return None
    lengths = json.loads(Path(args.lengths or LENGTHS).read_text())
    lengths = [min(int(n), args.max_new_tokens) for n in (lengths["lengths"] if isinstance(lengths, dict) else lengths)]
    draw = np.random.default_rng(0).choice(lengths, size=len(jobs))
    return {job: int(n) for job, n in zip(jobs, draw)}


def answer_length(tokens: list[int], stop: set[int]) -> int:
    return next((k + 1 for k, t in enumerate(tokens) if t in stop), len(tokens))


def run_static(model, run, jobs, limits, args, path, interventions):
    """Today's path (path='fast') or HF generate: static batches, each until its longest row ends."""
    skip = {(run.examples[i].id, s): None for i in range(len(run.examples)) for s in range(run.config.samples)}
    for i, s in jobs:
        skip.pop((run.examples[i].id, s))
    stop, count, steps, out = set(stop_ids(model)), 0, 0, {}
    for batch in run.plan(skip):
        ids, mask, _ = left_pad([torch.from_numpy(run.prompts.tokens[i]) for i, _ in batch], model.tokenizer.pad_token_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        n = max(limits[j] for j in batch) if limits else args.max_new_tokens
        sampling = Sampling(n, do_sample=True, temperature=1.0, top_p=1.0, min_new_tokens=n if limits else None)
        seeds = [run.seed(j) for j in batch]
        if path == "fast":
            new = fast_generate(model, ids, mask, sampling, interventions, eos_id=sorted(stop),
                                seeds=torch.tensor(seeds, device=model.device))
        else:
            torch.manual_seed(seeds[0] ^ len(seeds))
            new = hf_generate(model, ids, mask, sampling, interventions, eos_id=sorted(stop))
        steps += new.shape[1]
        for job, row in zip(batch, new.tolist()):
            length = limits[job] if limits else answer_length(row, stop)
            out[job], count = row[:length], count + length
    return count, steps, out, args.batch_size


def run_continuous(model, run, jobs, limits, args, interventions):
    n = args.max_new_tokens
    sampling = Sampling(n, do_sample=True, temperature=1.0, top_p=1.0, min_new_tokens=n if limits else None)
    sampler = ContinuousSampler(model, sampling, interventions, run.slot_plan, graph=None if args.graph else False,
                                refill=args.refill or None)
    order = [j for batch in run.plan({}) for j in batch if j in set(jobs)]
    work = [(j, run.prompts.tokens[j[0]], run.seed(j), *([limits[j]] if limits else [])) for j in order]
    out = dict(sampler.run(work))
    return sum(map(len, out.values())), sampler.steps, out, run.slot_plan.slots


def lengths_json(record: dict) -> str:
    """The record with one key per line and the lengths on one line."""
    meta = json.dumps({k: v for k, v in record.items() if k != "lengths"}, indent=1)
    return meta[:-2] + ',\n "lengths": ' + json.dumps(record["lengths"]) + "\n}\n"


def write_lengths(model, examples, samples, jobs, args) -> None:
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, samples=samples, seed=0,
                           batch_size=args.batch_size, decode="continuous", max_batch=args.max_batch)
    start = time.perf_counter()
    tokens, steps, out, rows = run_continuous(model, AnswerRun(model, examples, cfg), jobs, None, args, ())
    lengths = [len(out[j]) for j in jobs]
    Path(args.write_lengths).write_text(lengths_json({
        "what": "new tokens per answer, up to and including the stop token (max_new_tokens: not stopped)",
        "model": model.name, "questions": f"{args.questions} (first {len(examples)})", "answers": len(jobs),
        "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "seed": 0,
        "command": "python benchmarks/sampling.py " + " ".join(sys.argv[1:]), "lengths": lengths}))
    print(f"{len(jobs)} answers, {tokens} tokens in {time.perf_counter() - start:.0f} s ({steps} steps, {rows} slots); "
          f"lengths mean {np.mean(lengths):.0f}, median {np.median(lengths):.0f}, "
          f"{np.mean(np.array(lengths) >= args.max_new_tokens):.0%} at the limit -> {args.write_lengths}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registered model or HF folder")
    ap.add_argument("--random", default=None, help="a random-weight shape of lab.models.RANDOM_SHAPES (llama-3.1-8b, ...)")
    ap.add_argument("--tokenizer-dir", default=None, help="tokenizer for --random (default: SmolLM2's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--questions", default="general", help="'general' (shipped) or a question YAML")
    ap.add_argument("--limit-questions", type=int, default=8, help="first N questions (the protocol asks 8)")
    ap.add_argument("--write-lengths", default="", help="real weights: write the answer lengths of a continuous "
                    "run (real EOS) as JSON to this file and stop (how sampling_lengths.json was made)")
    ap.add_argument("--answers", type=int, default=400)
    ap.add_argument("--max-new-tokens", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16, help="today's static batch")
    ap.add_argument("--max-batch", type=int, default=0, help="continuous slots (0: from memory on CUDA, 16 on CPU)")
    ap.add_argument("--refill", type=int, default=0, help="free slots before a prefill (0: the sampler's default)")
    ap.add_argument("--no-graph", dest="graph", action="store_false", help="continuous path without CUDA graphs")
    ap.add_argument("--lengths", default="", help="random weights: JSON list of answer lengths to draw from")
    ap.add_argument("--paths", nargs="+", default=["today", "hf", "continuous"])
    ap.add_argument("--conditions", nargs="+", default=["unsteered", "steered", "ablated"])
    ap.add_argument("--steer-paths", nargs="+", default=["continuous"], help="paths that also run steered/ablated")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--bandwidth", type=float, default=0.0, help="bytes/s (default: H100 3.35e12, H200 4.8e12)")
    args = ap.parse_args()
    model = load(args)
    model.hf
    cuda = model.device.type == "cuda"
    weight_bytes = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    name = torch.cuda.get_device_name(model.device) if cuda else "cpu"
    bandwidth = args.bandwidth or next((b for k, b in BANDWIDTH.items() if k in name), float("nan"))
    examples, samples, jobs = workload(model, args)
    if args.write_lengths:
        write_lengths(model, examples, samples, jobs, args)
        return
    limits = row_limits(jobs, args)
    v = torch.nn.functional.normalize(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    conditions = {"unsteered": (), "steered": (Intervention({model.n_layers // 2: v}, op="add", alpha=4.0),),
                  "ablated": (Intervention({L: v for L in range(model.n_layers)}, op="ablate"),)}
    conditions = {c: conditions[c] for c in args.conditions}
    cells = [(p, c) for c in conditions for p in args.paths if c == "unsteered" or p in args.steer_paths]
    print(f"{model.name} on {name} ({model.dtype}), {weight_bytes / 1e9:.2f} GB of weights; {len(jobs)} answers "
          f"({len(examples)} prompts x {samples}), <= {args.max_new_tokens} new tokens, temperature 1, "
          f"{'lengths drawn from ' + str(args.lengths or LENGTHS.name) if limits else 'real EOS'}; torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    runs = {}
    for p, c in cells:  # prompts, seeds, plans and (continuous) the slot plan of each cell
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, samples=samples, seed=0,
                               batch_size=args.batch_size, decode=PATHS[p], max_batch=args.max_batch)
        runs[p, c] = AnswerRun(model, examples, cfg, conditions[c])

    def one(p, c, work, lengths, settings):
        if p == "continuous":
            return run_continuous(model, runs[p, c], work, lengths, settings, conditions[c])
        return run_static(model, runs[p, c], work, lengths, settings, PATHS[p], conditions[c])

    short = argparse.Namespace(**{**vars(args), "max_new_tokens": 8})
    for p, c in cells:  # kernels, allocator, the noise kernel's compilation: outside the timings
        one(p, c, jobs[:2], None, short)
    result = {}
    for _ in range(args.repeats):
        for p, c in cells:
            if cuda:
                torch.cuda.synchronize(model.device)
                torch.cuda.reset_peak_memory_stats(model.device)
            start = time.perf_counter()
            got = one(p, c, jobs, limits, args)
            if cuda:
                torch.cuda.synchronize(model.device)
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(model.device) / 2**30 if cuda else float("nan")
            if (p, c) not in result or seconds < result[p, c]["s"]:
                result[p, c] = {"s": seconds, "tokens": got[0], "steps": got[1], "out": got[2], "rows": got[3],
                                "peak": peak}
            print(f"  {p:10s} {c:9s} {seconds:8.1f} s  {got[0] / seconds:9.1f} tok/s  steps {got[1]}", flush=True)
    print(f"\n{'path':10s} {'condition':9s} {'rows':>5s} {'tok/s':>9s} {'answers/s':>9s} {'x today':>7s} "
          f"{'x unst.':>7s} {'peak GiB':>8s} {'x limit':>7s} {'same as today':>13s}")
    for p, c in cells:
        r = result[p, c]
        rate = r["tokens"] / r["s"]
        today = result.get(("today", c)) or result.get(("today", "unsteered"))
        base = result.get((p, "unsteered"))
        limit = r["rows"] * bandwidth / weight_bytes
        same = ""
        if p == "continuous" and today is not None and ("today", c) in result:
            same = f"{sum(r['out'][j] == today['out'][j] for j in jobs)}/{len(jobs)}"
        print(f"{p:10s} {c:9s} {r['rows']:5d} {rate:9.1f} {len(jobs) / r['s']:9.2f} "
              f"{rate / (today['tokens'] / today['s']) if today else float('nan'):7.2f} "
              f"{rate / (base['tokens'] / base['s']) if base else float('nan'):7.3f} "
              f"{r['peak']:8.1f} {rate / limit:7.3f} {same:>13s}", flush=True)


if __name__ == "__main__":
    main()
