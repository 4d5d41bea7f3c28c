"""Answer generation: batched HF generation with left padding, optional steering, resumable.

Every row records the settings that produced it (model fingerprint, system prompt,
temperature, max new tokens, seed, intervention label), so answer files are self-describing.
Each batch's random stream is seeded from its rows' (seed, example id, sample index): the same
prompts, batched the same way, get the same stream in every condition (unsteered, steered,
random control), which pairs the comparisons. (A resumed run may batch differently.)

Two decode paths give the same tokens (tested): `decode="hf"` is `model.hf.generate`, the
reference; `decode="fast"` is lab.decode (static KV cache, a CUDA-graph decode step on CUDA).
`"auto"` takes the fast path where it is faster (see AUTO_FAST). The path is recorded in each
row but not in the settings hash, so files written by either path resume with the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lab.data import DEFAULT_SYSTEM_PROMPT, ChatExample, render
from lab.errors import BadInput
from lab.hooks import left_pad
from lab.io import sha256_json
from lab.models import ModelLike


DECODE_PATHS = ("auto", "fast", "hf")
# device types where "auto" means the fast path. benchmarks/generation.py: 2.2-2.4x HF generate on an H200
# (8B shape); on CPU (SmolLM2) the two were level within noise, so CPU keeps the reference path.
AUTO_FAST = ("cuda",)


def decode_path(choice: str, model: ModelLike) -> str:
    """The path `choice` means for `model` ("auto" -> "fast" where it is measured faster and supported)."""
    from lab.decode import unsupported

    if choice != "auto":
        return choice
    return "fast" if model.device.type in AUTO_FAST and unsupported(model) is None else "hf"


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0
    batch_size: int = 16
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    decode: str = "auto"  # "hf" | "fast" | "auto"

    def __post_init__(self):
        if self.decode not in DECODE_PATHS:
            raise BadInput(f"decode must be one of {', '.join(DECODE_PATHS)}, not {self.decode!r}")
        if self.max_new_tokens < 1 or self.samples < 1 or self.batch_size < 1:
            raise BadInput("max_new_tokens, samples and batch_size must be positive")
        if not self.temperature >= 0:
            raise BadInput(f"temperature must be >= 0, not {self.temperature}")


def _row_seed(seed: int, example_id: str, sample: int) -> int:
    return int(sha256_json([seed, example_id, sample])[:8], 16)


def generate_answers(
    model: ModelLike,
    examples: list[ChatExample],
    config: GenerationConfig = GenerationConfig(),
    interventions: tuple = (),
    out_path: str | Path | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    label: str = "",
) -> list[dict]:
    """Generate `config.samples` answers per example; append rows to `out_path` (JSONL) as they finish.

    With `out_path`, rows already in the file (same settings) are kept and not regenerated.
    """
    if not examples:
        raise BadInput("no prompts to answer")
    prompts = render(examples, model.tokenizer, config.system_prompt)
    path = decode_path(config.decode, model)
    settings = {**{k: v for k, v in asdict(config).items() if k != "decode"}, "model": model.fingerprint, "model_name": model.name,
                "intervention": label or "+".join(iv.label for iv in interventions) or "none"}
    settings_hash = sha256_json(settings)
    done: dict[tuple[str, int], dict] = {}
    if out_path is not None and Path(out_path).exists():
        for line in Path(out_path).read_text().splitlines():
            row = json.loads(line)
            if row.get("settings_hash") == settings_hash:
                done[(row["id"], row["sample"])] = row
    jobs = [(i, s) for i in range(len(examples)) for s in range(config.samples) if (examples[i].id, s) not in done]
    order = sorted(jobs, key=lambda j: -len(prompts.tokens[j[0]]))  # little padding
    rows = list(done.values())
    sink = open(out_path, "a", encoding="utf-8") if out_path is not None else None
    try:
        for b in range(0, len(order), config.batch_size):
            batch = order[b: b + config.batch_size]
            texts = _generate_batch(model, [prompts.tokens[i] for i, _ in batch],
                                    [_row_seed(config.seed, examples[i].id, s) for i, s in batch],
                                    config, interventions, path)
            for (i, s), text in zip(batch, texts):
                ex = examples[i]
                row = {"id": ex.id, "sample": s, "label": ex.label, "question": ex.messages[-1]["content"],
                       "answer": text, **{k: v for k, v in ex.meta.items() if isinstance(v, (str, int, float))},
                       "settings": settings, "settings_hash": settings_hash, "decode": path}
                rows.append(row)
                if sink:
                    sink.write(json.dumps(row) + "\n")
            if sink:
                sink.flush()
            if on_batch:
                on_batch(min(b + config.batch_size, len(order)), len(order))
    finally:
        if sink:
            sink.close()
    index = {(e.id, s): n for n, (e, s) in enumerate((e, s) for e in examples for s in range(config.samples))}
    return sorted(rows, key=lambda r: index.get((r["id"], r["sample"]), 0))


def _generate_batch(model: ModelLike, token_lists: list[np.ndarray], seeds: list[int], config: GenerationConfig,
                    interventions: tuple, path: str) -> list[str]:
    from lab.decode import Sampling, fast_generate, hf_generate

    ids, mask, _ = left_pad([torch.from_numpy(t) for t in token_lists], model.tokenizer.pad_token_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    # One generator per batch seeded from its rows' seeds: reproducible for the same batch.
    torch.manual_seed(seeds[0] ^ len(seeds))
    sample = config.temperature > 0
    sampling = Sampling(config.max_new_tokens, do_sample=sample, temperature=config.temperature if sample else None,
                        top_p=config.top_p if sample else None)
    run = fast_generate if path == "fast" else hf_generate
    new = run(model, ids, mask, sampling, tuple(interventions), eos_id=model.tokenizer.eos_token_id)
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
