"""Continuous batching: answers sampled in a fixed number of slots, each refilled as its row ends.

Static batches (`decode="fast"`) run every batch until its longest answer ends, finished rows
keep computing, and a decode step at batch 16 costs on a GPU nearly what one at batch 200 does
(it is bound by reading the weights). Here a fixed number of slots (`max_batch`, by default as
many as free memory holds) decode together; when a row stops (an EOS id of the model's generation
config, or max_new_tokens) its answer is handed back at once and its slot is refilled with the
next prompt. Prompts are admitted longest first, so a prefill's rows are padded little.

Refill policy: on a GPU a prefill forward costs about one decode step however few prompts it
holds (both read every weight once), so free slots are refilled together once `refill` of them
are free (default 1/16 of the slots on CUDA: ~6% of the slots wait on average, one prefill per
16 ended rows); on the CPU, where cost follows tokens, a slot is refilled as soon as it is free.
A prefill always runs when no row is live or when every waiting prompt fits.

Each row draws from its own noise (lab.intervene.sampling_noise: keyed by row seed and step), so an answer
does not depend on which rows shared its step: it is the answer `decode="fast"` gives in a
static batch, or alone (tested). Interventions are applied per row as on the other paths
(lab.intervene.slots: prompt positions in prefill, generated positions in decode steps).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

import torch

from lab.core.errors import BadInput
from lab.models import ModelLike
from lab.intervene.slots import Slots, kv_bytes_per_token

MAX_SLOTS = 512
PREFILL_TOKENS = 8192  # tokens per prefill forward: bounds its activations and its DynamicCache
SAMPLING_BYTES = 48  # per slot and vocabulary entry: float32 logits and scores, the noise's int64 temporaries
FIXED_RESERVE = 512 << 20  # allocator slack, graphs' bookkeeping


def stop_ids(model: ModelLike) -> list[int]:
    """The ids that end an answer: the generation config's EOS ids (one or several) and the tokenizer's."""
    ids = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    tok = model.tokenizer.eos_token_id
    return sorted({int(i) for i in ids} | ({int(tok)} if tok is not None else set()))


def available_bytes(device: torch.device) -> int:
    """Memory free for the sampler's buffers on `device` (CUDA: free plus torch's cached, unused blocks)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class SlotPlan:
    """How many slots of how many columns, and the memory arithmetic behind the number."""

    slots: int
    length: int
    bytes_per_slot: int
    reserve: int
    available: int

    @property
    def capacity(self) -> int:
        return max(0, int((0.9 * self.available - self.reserve) // self.bytes_per_slot))


def plan_slots(model: ModelLike, longest_prompt: int, max_new: int, n_jobs: int, max_batch: int = 0,
               default: int = 16) -> SlotPlan:
    """The slots for a job, or one BadInput line when `max_batch` slots do not fit in memory.

    A slot holds `length` = longest prompt + max_new_tokens columns of keys and values for every
    layer (`kv_bytes_per_token` from the config), plus its share of the sampling buffers; the
    reserve covers one prefill forward of PREFILL_TOKENS tokens. Default: as many slots as fit
    (at most MAX_SLOTS and the number of answers) on CUDA, `default` (the static batch size) on CPU.
    """
    config = model.hf.config
    length = longest_prompt + max_new
    kv = kv_bytes_per_token(config, model.dtype)
    item = torch.empty((), dtype=model.dtype).element_size()
    per_slot = length * kv + int(config.vocab_size) * SAMPLING_BYTES + max_new * 8
    width = 4 * int(config.hidden_size) + 3 * int(getattr(config, "intermediate_size", 4 * config.hidden_size))
    reserve = PREFILL_TOKENS * (kv + width * item) + FIXED_RESERVE
    plan = SlotPlan(0, length, per_slot, reserve, available_bytes(model.device))
    if max_batch > plan.capacity:
        raise BadInput(f"--max-batch {max_batch} needs {max_batch * per_slot / 2**30:.1f} GiB of KV cache and sampling "
                       f"buffers ({per_slot / 2**20:.1f} MiB a slot of {length} tokens) plus "
                       f"{reserve / 2**30:.1f} GiB for prefill, but {plan.available / 2**30:.1f} GiB is free on "
                       f"{model.device}: at most {plan.capacity} slots fit")
    if plan.capacity < 1:
        raise BadInput(f"not one answer slot fits on {model.device}: a slot of {length} tokens needs "
                       f"{per_slot / 2**20:.1f} MiB plus {reserve / 2**30:.1f} GiB for prefill, "
                       f"{plan.available / 2**30:.1f} GiB is free")
    wanted = max_batch or (min(plan.capacity, MAX_SLOTS) if model.device.type == "cuda" else default)
    return SlotPlan(max(1, min(wanted, n_jobs)), length, per_slot, reserve, plan.available)


class ContinuousSampler:
    """Runs jobs (prompt tokens, row seed) through the slots; yields each job's tokens as it ends."""

    def __init__(self, model: ModelLike, sampling, interventions: tuple, plan: SlotPlan, graph: bool | None = None,
                 refill: int | None = None):
        from lab.intervene.decode import unsupported
        from lab.intervene.row_choice import RowChoice

        reason = unsupported(model)
        if reason:
            raise BadInput(f"decode='continuous' cannot run {reason}: use decode='hf'")
        graph = model.device.type == "cuda" if graph is None else graph
        choice = RowChoice.build(model, sampling, stop_ids(model))
        self.model, self.choice = model, choice
        try:
            self.slots = Slots(model, plan.slots, plan.length, sampling.max_new_tokens, choice, interventions, graph)
        except torch.OutOfMemoryError:
            raise BadInput(f"{plan.slots} answer slots of {plan.length} tokens did not fit on {model.device} "
                           f"(another process may hold memory): pass a smaller --max-batch") from None
        self.refill = refill or (max(1, plan.slots // 16) if model.device.type == "cuda" else 1)
        self.prefills = self.steps = 0

    def run(self, jobs: list[tuple]) -> Iterator[tuple[object, list[int]]]:
        """`jobs`: (key, prompt tokens, row seed[, new-token limit]) in admission order. Yields (key, new
        tokens) as rows end."""
        slots, n = self.slots, self.slots.n
        pending = deque(jobs)
        held: list = [None] * n  # the job key in each slot
        while True:
            free = [s for s in range(n) if held[s] is None]
            busy = n - len(free)
            if pending and free and (len(free) >= self.refill or busy == 0 or len(pending) <= len(free)):
                self._admit(pending, free, held)
            elif not pending and busy:
                self._compact(held)
            occupied = [s for s in range(n) if held[s] is not None]
            if not occupied:
                return
            slots.step_rows(slots.width(occupied[-1] + 1))
            self.steps += 1
            live, tokens = slots.read(occupied)
            if not all(live):  # answers are about to leave: none may come from non-finite scores
                self.choice.guard.check(self.model)
            for s, tok in zip([s for s, alive in zip(occupied, live) if not alive], tokens):
                yield held[s], tok
                held[s] = None

    def _admit(self, pending: deque, free: list[int], held: list) -> None:
        """Prefill waiting prompts into the lowest free slots, in forwards of at most PREFILL_TOKENS tokens."""
        take = [pending.popleft() for _ in range(min(len(free), len(pending)))]
        start = 0
        while start < len(take):
            end = start + 1
            while end < len(take) and (end + 1 - start) * max(len(t[1]) for t in take[start:end + 1]) <= PREFILL_TOKENS:
                end += 1
            chunk, where = take[start:end], free[start:end]
            limits = [t[3] if len(t) > 3 else self.slots.max_new for t in chunk]
            self.slots.admit(where, [t[1] for t in chunk], [t[2] for t in chunk], limits)
            self.prefills += 1
            for s, job in zip(where, chunk):
                held[s] = job[0]
            start = end

    def _compact(self, held: list) -> None:
        """In the tail, move rows into the lowest slots so the step (and its graph) covers fewer slots."""
        occupied = [s for s in range(len(held)) if held[s] is not None]
        target = self.slots.width(len(occupied))
        src = [s for s in occupied if s >= target]
        if not src:
            return
        dst = [s for s in range(target) if held[s] is None][: len(src)]
        self.slots.move(src, dst)
        for s, d in zip(src, dst):
            held[d], held[s] = held[s], None


def stream_rows(run, sampling, batches: list[list[tuple[int, int]]], **options) -> Iterator[list[dict]]:
    """The answer rows of `run` (a lab.intervene.generate.AnswerRun) for every job of `batches`, each as its row ends.
    The sampler is left on `run.sampler` (its step and prefill counts)."""
    run.sampler = ContinuousSampler(run.model, sampling, run.interventions, run.slot_plan, **options)
    jobs = [(j, run.prompts.tokens[j[0]], run.seed(j)) for batch in batches for j in batch]
    for job, tokens in run.sampler.run(jobs):
        yield [run.row(job, run.model.tokenizer.decode(tokens, skip_special_tokens=True).strip())]
