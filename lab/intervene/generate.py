"""Answer generation: batched HF generation with left padding, optional steering, resumable.

Every row records the settings that produced it (model fingerprint, system prompt,
temperature, max new tokens, seed, intervention label), so answer files are self-describing.
Each batch's random stream is seeded from its rows' (seed, example id, sample index): the same
prompts, batched the same way, get the same stream in every condition (unsteered, steered,
random control), which pairs the comparisons. (A resumed run may batch differently.)

Two decode paths give the same tokens (tested): `decode="hf"` is `model.hf.generate`, the
reference; `decode="fast"` is lab.intervene.decode (static KV cache, a CUDA-graph decode step on CUDA).
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

from lab.data.formats import DEFAULT_SYSTEM_PROMPT, ChatExample, render
from lab.core.errors import BadInput
from lab.models.hooks import left_pad
from lab.core.io import sha256_json
from lab.models import ModelLike


DECODE_PATHS = ("auto", "fast", "hf")
# device types where "auto" means the fast path. benchmarks/generation.py: 2.2-2.4x HF generate on an H200
# (8B shape); on CPU (SmolLM2) the two were level within noise, so CPU keeps the reference path.
AUTO_FAST = ("cuda",)


def decode_path(choice: str, model: ModelLike) -> str:
    """The path `choice` means for `model` ("auto" -> "fast" where it is measured faster and supported)."""
    from lab.intervene.decode import unsupported

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


Job = tuple[int, int]  # (example index, sample index)


class AnswerRun:
    """One answer-generation job: its prompts, settings and batch plan.

    `generate_answers` runs every batch of the plan in one process; `lab.intervene.shards.sample_answers`
    gives each of N processes every N-th batch. A batch's rows, padding and random stream depend
    only on the batch, so both write the same rows.
    """

    def __init__(self, model: ModelLike, examples: list[ChatExample], config: GenerationConfig,
                 interventions: tuple = (), label: str = ""):
        if not examples:
            raise BadInput("no prompts to answer")
        self.model, self.examples, self.config, self.interventions = model, examples, config, tuple(interventions)
        self.prompts = render(examples, model.tokenizer, config.system_prompt)
        self.path = decode_path(config.decode, model)
        self.settings = {**{k: v for k, v in asdict(config).items() if k != "decode"}, "model": model.fingerprint,
                         "model_name": model.name,
                         "intervention": label or "+".join(iv.label for iv in interventions) or "none"}
        self.settings_hash = sha256_json(self.settings)

    def done(self, *files: str | Path | None) -> dict[tuple[str, int], dict]:
        """Rows of these settings already in `files` (JSONL; missing files are empty), by (id, sample)."""
        rows: dict[tuple[str, int], dict] = {}
        for f in files:
            if f is not None and Path(f).exists():
                for line in Path(f).read_text().splitlines():
                    row = json.loads(line)
                    if row.get("settings_hash") == self.settings_hash:
                        rows[(row["id"], row["sample"])] = row
        return rows

    def plan(self, done: dict) -> list[list[Job]]:
        """The batches still to generate, longest prompts first (little padding), in the order one process runs them."""
        cfg = self.config
        jobs = [(i, s) for i in range(len(self.examples)) for s in range(cfg.samples)
                if (self.examples[i].id, s) not in done]
        order = sorted(jobs, key=lambda j: -len(self.prompts.tokens[j[0]]))
        return [order[b: b + cfg.batch_size] for b in range(0, len(order), cfg.batch_size)]

    def generate(self, batch: list[Job]) -> list[dict]:
        """The rows of one batch (generated now)."""
        texts = _generate_batch(self.model, [self.prompts.tokens[i] for i, _ in batch],
                                [_row_seed(self.config.seed, self.examples[i].id, s) for i, s in batch],
                                self.config, self.interventions, self.path)
        rows = []
        for (i, s), text in zip(batch, texts):
            ex = self.examples[i]
            rows.append({"id": ex.id, "sample": s, "label": ex.label, "question": ex.messages[-1]["content"],
                         "answer": text, **{k: v for k, v in ex.meta.items() if isinstance(v, (str, int, float))},
                         "settings": self.settings, "settings_hash": self.settings_hash, "decode": self.path})
        return rows

    def ordered(self, rows: list[dict]) -> list[dict]:
        """`rows` in example order, samples of one example together."""
        index = {(e.id, s): n for n, (e, s) in enumerate((e, s) for e in self.examples
                                                          for s in range(self.config.samples))}
        return sorted(rows, key=lambda r: index.get((r["id"], r["sample"]), 0))


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
    Over several GPUs: `lab.intervene.shards.sample_answers` (the same rows and file).
    """
    run = AnswerRun(model, examples, config, interventions, label)
    done = run.done(out_path)
    plan = run.plan(done)
    total, finished = sum(map(len, plan)), 0
    rows = list(done.values())
    sink = open(out_path, "a", encoding="utf-8") if out_path is not None else None
    try:
        for batch in plan:
            new = run.generate(batch)
            rows += new
            if sink:
                sink.write("".join(json.dumps(row) + "\n" for row in new))
                sink.flush()
            finished += len(batch)
            if on_batch:
                on_batch(finished, total)
    finally:
        if sink:
            sink.close()
    return run.ordered(rows)


def _generate_batch(model: ModelLike, token_lists: list[np.ndarray], seeds: list[int], config: GenerationConfig,
                    interventions: tuple, path: str) -> list[str]:
    from lab.intervene.decode import Sampling, fast_generate, hf_generate

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
