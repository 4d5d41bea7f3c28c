"""Steered vs unsteered batched generation throughput, measured side by side in one run.

Conditions on the same prompts, greedy, a fixed number of new tokens (EOS ignored so every
condition generates the same count): unsteered; add alpha*v at one layer; ablate v at every
layer (the heaviest: a projection per layer per token). Target: steered >= 0.9x unsteered.

    python benchmarks/steering_throughput.py                        # CPU, SmolLM2
    python benchmarks/steering_throughput.py --random llama-3.2-1b --tokenizer-dir .gpu/tok --device cuda
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
from lab.models.hooks import left_pad  # noqa: E402
from lab.intervene.steering import Intervention, steer  # noqa: E402


def load(args):
    from lab.models import load_model, random_model

    if args.random:
        return random_model(args.random, tokenizer_source=args.tokenizer_dir or "smollm2-135m-instruct",
                            dtype=args.dtype, device=args.device)
    return load_model(args.model, dtype=args.dtype, device=args.device)


def generate(model, ids, mask, new_tokens, interventions):
    with torch.inference_mode(), steer(model, *interventions, prompt_width=ids.shape[1]):
        out = model.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--random", default=None)
    parser.add_argument("--tokenizer-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load(args)
    prompts = render(load_contrast("refusal")[: args.batch], model.tokenizer)
    ids, mask, _ = left_pad([torch.from_numpy(t) for t in prompts.tokens], model.tokenizer.pad_token_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    v = torch.nn.functional.normalize(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    mid = model.n_layers // 2
    conditions = {
        "unsteered": (),
        f"add at layer {mid}": (Intervention({mid: v}, op="add", alpha=4.0),),
        "ablate at all layers": (Intervention({L: v for L in range(model.n_layers)}, op="ablate"),),
    }
    generate(model, ids, mask, 4, ())  # warm-up
    best = {name: float("inf") for name in conditions}
    for _ in range(args.repeats):  # interleaved, so drift hits every condition alike
        for name, ivs in conditions.items():
            t = time.perf_counter()
            generate(model, ids, mask, args.new_tokens, ivs)
            best[name] = min(best[name], time.perf_counter() - t)
    n = args.batch * args.new_tokens
    print(f"model {model.name} on {model.device} ({model.dtype}), batch {args.batch}, {args.new_tokens} new tokens, "
          f"best of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'condition':24s} {'tok/s':>10s} {'x unsteered':>12s}")
    for name, seconds in best.items():
        print(f"{name:24s} {n / seconds:10.1f} {best['unsteered'] / seconds:12.3f}")


if __name__ == "__main__":
    main()
