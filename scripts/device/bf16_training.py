"""bf16 training on real Qwen2.5-Coder-0.5B on the GPU: the nan's root cause, and bf16 vs fp32 loss curves.

    python3 scripts/device/bf16_training.py --out $OUT [--model qwen2.5-coder-0.5b-instruct]

1. Root cause on real weights: the `mo` recipe's batches of the papers' medical set (the failing run's
   set-up: micro-batch 16, 256 tokens, the default system prompt) whose width is 64 mod 128, and a
   control batch of another width, each run forward + backward once with a fresh adapter, with
   PyTorch's default attention dispatch (cuDNN allowed) and with the kernels training now uses;
   non-finite gradients are counted and the first non-finite module named (`lab.training.divergence`).
2. The full `mo` medical run as it failed before (cuDNN attention allowed): where it stops.
3. The full run in bf16 with the fix, and in fp32: loss at every step, gradient norms, step time;
   the relative gap at each checkpoint. Acceptance: within 2% at every checkpoint; bf16 step faster.
Writes <out>/bf16_training.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lab  # noqa: F401  (environment before torch)
import numpy as np
import torch

from lab.data import read_chat_jsonl, render
from lab.training.divergence import locate_nonfinite
from lab.core.errors import TrainingDiverged
from lab.models import load_model
import lab.training.lora as train


def batch_widths(prompts, config, n_examples):
    per_update = config.batch_size * config.grad_accum
    steps = math.ceil(n_examples / per_update)
    widths = []
    for step in range(steps):
        idx = train._batches(n_examples, config.batch_size, config.seed, 0)[step]
        widths.append(int(max(len(prompts.tokens[i]) for i in idx)))
    return widths


def root_cause(model, examples, config, out: dict) -> None:
    from peft import get_peft_model

    train_side, _ = train.split_training(examples, config)
    prompts = render(train_side, model.tokenizer, config.system_prompt, max_tokens=config.max_length, truncate=True)
    widths = batch_widths(prompts, config, len(train_side))
    out["widths_64_mod_128"] = [(s + 1, w) for s, w in enumerate(widths) if w % 128 == 64]
    control = [s for s, w in enumerate(widths) if w % 128 not in (0, 64)][:1]
    cases = [s for s, w in enumerate(widths) if w % 128 == 64][:2] + control
    torch.manual_seed(0)
    peft_model = get_peft_model(model.for_training().hf, config.lora_config(model.n_layers))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    rows = []
    try:
        for step in cases:
            idx = train._batches(len(train_side), config.batch_size, config.seed, 0)[step]
            ids, mask, labels = (t.to(model.device) for t in train._collate(prompts.tokens, prompts.roles, idx,
                                                                    model.tokenizer.pad_token_id))
            for kernels in ("default dispatch (cuDNN allowed)", "training kernels (cuDNN excluded)"):
                train.EXCLUDE_CUDNN_ATTENTION = kernels.startswith("training")
                for p in params:
                    p.grad = None
                with train.training_kernels(ids.device):
                    where = locate_nonfinite(peft_model, lambda: train._answer_loss_sum(peft_model, ids, mask, labels),
                                             mask)
                bad = sum(int((~torch.isfinite(p.grad)).sum()) for p in params if p.grad is not None)
                rows.append({"step": step + 1, "width": int(ids.shape[1]), "kernels": kernels,
                             "nonfinite_grads": bad, "first_nonfinite": where.line() if where.found else "none"})
                print(f"root cause: step {step + 1} width {ids.shape[1]} {kernels}: {bad} non-finite gradient values; "
                      f"{rows[-1]['first_nonfinite']}", flush=True)
    finally:
        train.EXCLUDE_CUDNN_ATTENTION = True
        peft_model.unload()
        model.hf.eval()
    out["root_cause"] = rows


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def full_run(model, examples, config, folder: Path) -> dict:
    _sync()
    t = time.perf_counter()
    try:
        result = train.train_lora(model.for_training(), examples, folder, config)
    except TrainingDiverged as exc:
        return {"diverged": str(exc), "seconds": round(time.perf_counter() - t, 1),
                "divergence": json.loads((folder / "divergence.json").read_text())}
    _sync()
    seconds = time.perf_counter() - t
    steps = [int(p.name.split("-")[1]) for p in result.checkpoints]
    return {"losses": result.losses, "grad_norms": result.grad_norms, "checkpoints": steps,
            "seconds": round(seconds, 1), "seconds_per_step": seconds / len(result.losses)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--shared", default="/root/shared")
    parser.add_argument("--skip-fp32", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N examples (smoke runs)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = read_chat_jsonl(Path(args.shared) / "data/model-organisms/bad_medical_advice.jsonl")[: args.limit]
    config = train.recipe_config("mo", batch_size=16, grad_accum=1, checkpoints_first_epoch=3)
    report: dict = {"model": args.model, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    path = out_dir / "bf16_training.json"

    def save():
        path.write_text(json.dumps(report, indent=1))

    bf16 = load_model(args.model, dtype="bfloat16", device=args.device)
    root_cause(bf16, examples, config, report)
    save()
    work = out_dir / "runs" if args.device == "cpu" else Path("/root/bf16-runs")
    train.EXCLUDE_CUDNN_ATTENTION = False
    report["bf16_cudnn_allowed"] = full_run(bf16, examples, config, work / "bf16-cudnn")
    train.EXCLUDE_CUDNN_ATTENTION = True
    print("bf16, cuDNN attention allowed:", report["bf16_cudnn_allowed"].get("diverged", "completed"), flush=True)
    save()
    report["bf16"] = full_run(bf16, examples, config, work / "bf16")
    print(f"bf16 (training kernels): {report['bf16'].get('diverged') or report['bf16']['seconds']} s", flush=True)
    save()
    del bf16
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not args.skip_fp32:
        fp32 = load_model(args.model, dtype="float32", device=args.device)
        report["fp32"] = full_run(fp32, examples, config, work / "fp32")
        save()
    b, f = report.get("bf16", {}), report.get("fp32", {})
    if "losses" in b and "losses" in f:
        lb, lf = np.array(b["losses"]), np.array(f["losses"])
        gap = np.abs(lb - lf) / lf
        smooth = lambda x: np.convolve(x, np.ones(10) / 10, mode="valid")  # noqa: E731
        report["comparison"] = {
            "relative_gap_at_checkpoints": {s: float(gap[s - 1]) for s in b["checkpoints"]},
            "max_relative_gap_any_step": float(gap.max()),
            "max_relative_gap_10_step_mean": float(np.abs(smooth(lb) - smooth(lf)).max() / smooth(lf).min()),
            "step_time_ratio_bf16_over_fp32": b["seconds_per_step"] / f["seconds_per_step"]}
        print(json.dumps(report["comparison"], indent=1))
    save()


if __name__ == "__main__":
    main()
