"""Generation throughput side by side: HF default cache, HF static cache, emlab's fast path.

Each path runs unsteered, steered (add alpha*v at one layer) and ablated (v removed at every
layer: a projection per layer per token) on the same left-padded prompts, greedy, with a
fixed number of new tokens (min_new_tokens = max_new_tokens, so EOS never ends a run early;
the stop check still runs). Runs are interleaved, best of `--repeats`. Prints tok/s, the ratio
to HF default in the same condition, the ratio to the same path unsteered, and the ratio to
the memory-bandwidth limit (every weight read once per step: batch x bandwidth / weight bytes).
Also prints how many greedy tokens the fast path shares with HF default (random bf16 weights
give near-tied logits, so only fp32 or real weights make that an exactness check).

    python benchmarks/generation.py                                     # CPU, SmolLM2 fp32
    python benchmarks/generation.py --random llama-3.1-8b --tokenizer-dir .gpu/smollm2-tokenizer \\
        --device cuda --dtype bfloat16 --batch 32 64 --prompt-len 64 --new-tokens 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab  # noqa: E402,F401
import torch  # noqa: E402

from lab.data.formats import load_contrast, render  # noqa: E402
from lab.intervene.decode import Sampling, fast_generate, hf_generate  # noqa: E402
from lab.models.hooks import left_pad  # noqa: E402
from lab.intervene.steering import Intervention  # noqa: E402

LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                   tie_word_embeddings=False)


def load(args):
    from lab import models

    if args.random:
        models.RANDOM_SHAPES.setdefault("llama-3.1-8b", LLAMA_31_8B)
        return models.random_model(args.random, tokenizer_source=args.tokenizer_dir or "smollm2-135m-instruct",
                                   dtype=args.dtype, device=args.device)
    return models.load_model(args.model, dtype=args.dtype, device=args.device)


def prompts(model, batch: int, prompt_len: int | None):
    """Real refusal-contrast prompts (CPU), or `prompt_len` random tokens per row (random models)."""
    if prompt_len:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(100, model.tokenizer.vocab_size, (batch, prompt_len), generator=gen)
        return ids.to(model.device), torch.ones_like(ids).to(model.device)
    rendered = render((load_contrast("refusal") * 4)[:batch], model.tokenizer)
    ids, mask, _ = left_pad([torch.from_numpy(t) for t in rendered.tokens], model.tokenizer.pad_token_id)
    return ids.to(model.device), mask.to(model.device)


def sync(model):
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--random", default=None, help="a random-weight shape (llama-3.1-8b, llama-3.2-1b)")
    parser.add_argument("--tokenizer-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--prompt-len", type=int, default=None, help="random prompts of this length")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--paths", nargs="+", default=["hf", "hf-static", "fast"])
    parser.add_argument("--full-warmup", action="store_true", help="warm HF paths up at full length too")
    parser.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s (H200: 4.8e12)")
    args = parser.parse_args()
    model = load(args)
    eos = model.tokenizer.eos_token_id
    weight_bytes = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    v = torch.nn.functional.normalize(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    mid = model.n_layers // 2
    conditions = {"unsteered": (), "steered": (Intervention({mid: v}, op="add", alpha=4.0),),
                  "ablated": (Intervention({L: v for L in range(model.n_layers)}, op="ablate"),)}
    paths = {
        "hf": lambda ids, mask, s, ivs: hf_generate(model, ids, mask, s, ivs, eos_id=eos),
        "hf-static": lambda ids, mask, s, ivs: hf_generate(model, ids, mask, s, ivs, eos_id=eos,
                                                           cache_implementation="static", disable_compile=True),
        "fast": lambda ids, mask, s, ivs: fast_generate(model, ids, mask, s, ivs, eos_id=eos),
    }
    paths = {name: paths[name] for name in args.paths}
    print(f"model {model.name} on {model.device} ({model.dtype}), {weight_bytes / 1e9:.2f} GB of weights, "
          f"{args.new_tokens} new tokens, best of {args.repeats}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}", flush=True)
    for batch in args.batch:
        ids, mask = prompts(model, batch, args.prompt_len)
        n = args.new_tokens
        sampling = Sampling(n, min_new_tokens=n)
        for run in paths.values():  # warm-up (allocator, clocks, graph capture) outside the timings
            for ivs in conditions.values():
                run(ids, mask, sampling if args.full_warmup or run is paths.get("fast") else Sampling(4, min_new_tokens=4),
                    ivs)
        best = {(p, c): float("inf") for p in paths for c in conditions}
        tokens = {}
        for _ in range(args.repeats):  # interleaved, so drift hits every cell alike
            for c, ivs in conditions.items():
                for p, run in paths.items():
                    sync(model)
                    t = time.perf_counter()
                    tokens[p, c] = run(ids, mask, sampling, ivs)
                    sync(model)
                    best[p, c] = min(best[p, c], time.perf_counter() - t)
        limit = batch * args.bandwidth / weight_bytes if model.device.type == "cuda" else float("nan")
        print(f"\nbatch {batch}, prompt width {ids.shape[1]}; bandwidth limit {limit:.0f} tok/s")
        print(f"{'path':10s} {'condition':10s} {'tok/s':>9s} {'x hf':>6s} {'x unst.':>7s} {'x limit':>7s} "
              f"{'same tok as hf':>14s}")
        for p in paths:
            for c in conditions:
                rate = batch * n / best[p, c]
                same = (tokens[p, c] == tokens["hf", c]).float().mean().item() if "hf" in paths else float("nan")
                base = batch * n / best["hf", c] if "hf" in paths else float("nan")
                print(f"{p:10s} {c:10s} {rate:9.1f} {rate / base:6.2f} {best[p, 'unsteered'] / best[p, c]:7.3f} "
                      f"{rate / limit:7.3f} {same:14.3f}", flush=True)


if __name__ == "__main__":
    main()
