"""Answer generation: static batches or continuous batching, optional steering, resumable.

Every row records the settings that produced it (model fingerprint, system prompt,
temperature, max new tokens, seed, intervention label), so answer files are self-describing.
Each row's seed comes from (seed, example id, sample index), so the same answer gets the same
random stream in every condition (unsteered, steered, random control), which pairs the
comparisons. On the fast and continuous paths the stream is the row's own; on the hf path it
is its batch's (seeded from the batch's rows), so there a resumed run, which may batch
differently, may draw other answers.

Decode paths (`GenerationConfig.decode`), recorded in each row but not in the settings hash, so
a file written by one path resumes with another:

* `"hf"`: `model.hf.generate` in static batches, the reference. Sampling is HF's (softmax and
  `torch.multinomial` on the global generator, seeded per batch from its rows' seeds), so a
  sampled answer depends on its batch.
* `"fast"`: lab.intervene.decode in static batches (static KV cache, a CUDA-graph step on CUDA): greedy
  tokens equal `generate`'s; sampling draws each row from its own noise (lab.intervene.sampling_noise,
  keyed by the row's seed and step), so a sampled answer does not depend on its batch.
* `"continuous"`: lab.intervene.sampler, slots refilled as rows end, the same per-row noise: the same
  answers as `"fast"` (up to rounding of other matmul shapes; tested), rows written as they end.
* `"auto"`: continuous on CUDA where the model allows it (see AUTO_CONTINUOUS), else hf.

Seeded sampled answers are therefore reproducible across batch shapes and ranks on the fast and
continuous paths, and differ from the hf path's (another random stream, the same distribution).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from lab.intervene.answers_file import open_for_append, read_rows, settle
from lab.data import DEFAULT_SYSTEM_PROMPT, ChatExample, render
from lab.core.errors import BadInput
from lab.models.hooks import left_pad
from lab.core.io import sha256_json
from lab.models import ModelLike


DECODE_PATHS = ("auto", "continuous", "fast", "hf")
# device types where "auto" means continuous batching (benchmarks/sampling.py). On CPU (SmolLM2) the
# static paths were level with HF generate and a step's cost follows its rows, so CPU keeps the reference path.
AUTO_CONTINUOUS = ("cuda",)


def decode_path(choice: str, model: ModelLike) -> str:
    """The path `choice` means for `model` ("auto" -> "continuous" where it is supported, on CUDA)."""
    from lab.intervene.decode import unsupported

    if choice != "auto":
        return choice
    return "continuous" if model.device.type in AUTO_CONTINUOUS and unsupported(model) is None else "hf"


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0
    batch_size: int = 16
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    decode: str = "auto"  # "hf" | "fast" | "continuous" | "auto"
    max_batch: int = 0  # continuous slots (0: as many as memory holds on CUDA, batch_size on CPU)

    def __post_init__(self):
        if self.decode not in DECODE_PATHS:
            raise BadInput(f"decode must be one of {', '.join(DECODE_PATHS)}, not {self.decode!r}")
        if self.max_new_tokens < 1 or self.samples < 1 or self.batch_size < 1 or self.max_batch < 0:
            raise BadInput("max_new_tokens, samples and batch_size must be positive, max_batch not negative")
        if not self.temperature >= 0:
            raise BadInput(f"temperature must be >= 0, not {self.temperature}")


def _row_seed(seed: int, example_id: str, sample: int) -> int:
    return int(sha256_json([seed, example_id, sample])[:8], 16)


Job = tuple[int, int]  # (example index, sample index)


class AnswerRun:
    """One answer-generation job: its prompts, settings and batch plan.

    `generate_answers` runs every batch of the plan in one process; `lab.intervene.shards.sample_answers`
    gives each of N processes every N-th batch. A batch's rows, padding and random stream depend
    only on the batch, so both write the same rows. A finished answers file holds a job's rows in
    the order of its full plan (`settle`), however they were produced.
    """

    def __init__(self, model: ModelLike, examples: list[ChatExample], config: GenerationConfig,
                 interventions: tuple = (), label: str = ""):
        if not examples:
            raise BadInput("no prompts to answer")
        self.model, self.examples, self.config, self.interventions = model, examples, config, tuple(interventions)
        self.prompts = render(examples, model.tokenizer, config.system_prompt)
        longest = int(np.argmax(self.prompts.lengths))
        if int(self.prompts.lengths[longest]) + config.max_new_tokens > model.n_ctx:
            raise BadInput(f"example {examples[longest].id!r}: its prompt ({int(self.prompts.lengths[longest])} tokens) "
                           f"plus max_new_tokens ({config.max_new_tokens}) exceeds {model.name}'s context "
                           f"({model.n_ctx} tokens)")
        self.path = decode_path(config.decode, model)
        self.settings = {**{k: v for k, v in asdict(config).items() if k not in ("decode", "max_batch")},
                         "model": model.fingerprint, "model_name": model.name,
                         "intervention": label or "+".join(iv.label for iv in interventions) or "none"}
        self.settings_hash = sha256_json(self.settings)
        self.slot_plan = None
        if self.path == "continuous":  # a --max-batch that does not fit fails here, before any work
            from lab.intervene.sampler import plan_slots

            self.slot_plan = plan_slots(model, int(self.prompts.lengths.max()), config.max_new_tokens,
                                        len(examples) * config.samples, config.max_batch, config.batch_size)

    def done(self, *files: str | Path | None) -> dict[tuple[str, int], dict]:
        """Rows of these settings already in `files` (JSONL; missing files are empty), by (id, sample)."""
        rows: dict[tuple[str, int], dict] = {}
        for f in files:
            for row in read_rows(f):
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

    def seed(self, job: Job) -> int:
        return _row_seed(self.config.seed, self.examples[job[0]].id, job[1])

    def row(self, job: Job, text: str) -> dict:
        ex = self.examples[job[0]]
        return {"id": ex.id, "sample": job[1], "label": ex.label, "question": ex.messages[-1]["content"],
                "answer": text, **{k: v for k, v in ex.meta.items() if isinstance(v, (str, int, float))},
                "settings": self.settings, "settings_hash": self.settings_hash, "decode": self.path}

    def generate(self, batch: list[Job]) -> list[dict]:
        """The rows of one batch (generated now)."""
        texts = _generate_batch(self.model, [self.prompts.tokens[i] for i, _ in batch], [self.seed(j) for j in batch],
                                self.config, self.interventions, self.path)
        return [self.row(job, text) for job, text in zip(batch, texts)]

    def stream(self, batches: list[list[Job]], **sampler_options) -> Iterator[list[dict]]:
        """Rows of these batches as they are ready: a batch at a time on the static paths, one row at a
        time as it ends on the continuous path (which runs every job of `batches` through its slots)."""
        if self.path == "continuous":
            from lab.intervene.sampler import stream_rows

            yield from stream_rows(self, _sampling(self.config), batches, **sampler_options)
            return
        for batch in batches:
            yield self.generate(batch)

    def ordered(self, rows: list[dict]) -> list[dict]:
        """`rows` in example order, samples of one example together."""
        index = {(e.id, s): n for n, (e, s) in enumerate((e, s) for e in self.examples
                                                          for s in range(self.config.samples))}
        return sorted(rows, key=lambda r: index.get((r["id"], r["sample"]), 0))

    def settle(self, path: str | Path) -> None:
        """Put this job's rows in `path` into the order of its full plan (the order a static run writes)."""
        settle(path, self.settings_hash,
               {(self.examples[i].id, s): n for n, (i, s) in enumerate(j for b in self.plan({}) for j in b)})


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

    With `out_path`, rows already in the file (same settings) are kept and not regenerated; at the
    end the file holds them in plan order (`AnswerRun.settle`), so a killed and resumed run ends
    with the file an uninterrupted one writes. Over several GPUs: `lab.intervene.shards.sample_answers`.
    """
    run = AnswerRun(model, examples, config, interventions, label)
    done = run.done(out_path)
    plan = run.plan(done)
    total, finished = sum(map(len, plan)), 0
    rows = list(done.values())
    sink = open_for_append(out_path) if out_path is not None else None
    try:
        for new in run.stream(plan):
            rows += new
            if sink:
                sink.write("".join(json.dumps(row) + "\n" for row in new))
                sink.flush()
            finished += len(new)
            if on_batch:
                on_batch(finished, total)
    finally:
        if sink:
            sink.close()
    if out_path is not None:
        run.settle(out_path)
    return run.ordered(rows)


def _sampling(config: GenerationConfig):
    from lab.intervene.decode import Sampling

    sample = config.temperature > 0
    return Sampling(config.max_new_tokens, do_sample=sample, temperature=config.temperature if sample else None,
                    top_p=config.top_p if sample else None)


def _generate_batch(model: ModelLike, token_lists: list[np.ndarray], seeds: list[int], config: GenerationConfig,
                    interventions: tuple, path: str) -> list[str]:
    from lab.intervene.decode import fast_generate, hf_generate
    from lab.intervene.sampler import stop_ids

    ids, mask, _ = left_pad([torch.from_numpy(t) for t in token_lists], model.tokenizer.pad_token_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    sampling, eos = _sampling(config), stop_ids(model)
    if path == "fast":  # each row draws from its own noise, keyed by its seed (lab.intervene.sampling_noise)
        new = fast_generate(model, ids, mask, sampling, tuple(interventions), eos_id=eos,
                            seeds=torch.tensor(seeds, dtype=torch.long, device=model.device))
    else:  # HF's sampler: one generator per batch seeded from its rows' seeds, reproducible for the same batch
        torch.manual_seed(seeds[0] ^ len(seeds))
        new = hf_generate(model, ids, mask, sampling, tuple(interventions), eos_id=eos)
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
