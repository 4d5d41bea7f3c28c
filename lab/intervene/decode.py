"""Fast decoding with emlab's interventions: a static KV cache and, on CUDA, one captured step.

`hf.generate` spends most of a decode step on the host at batch sizes emlab uses (Python per
layer, a growing cache, a device-to-host check of every step's stop condition): 885 tok/s on
an 8B shape where reading the weights allows ~9,600 (benchmarks/README.md). This path keeps the model's
own forward and emlab's steering hooks (lab.intervene.steering.steer) and removes the rest:

* a `StaticCache` sized once (prompt + new tokens), so every decode step has the same shapes;
* on CUDA, the decode step (mask, positions, forward with the steering hooks, logits) is
  captured once as a CUDA graph and replayed: one launch per token instead of thousands.
  Graphs are kept per (batch bucket, length bucket, interventions) and reused across calls;
  batches and prompt widths are padded up to buckets so that reuse happens;
* the stop condition (every row has produced EOS) is read from the device every
  `eos_every` steps, not every step, and the output is trimmed to where HF would have stopped.

What stays HF's: the logits processors (`_get_logits_processor`: temperature, top-p,
repetition penalty from the model's generation config, min-new-tokens), fed the same
input_ids as in `generate`, and, unless rows bring their own seeds, the sampler (softmax +
`torch.multinomial` on the global generator). So greedy tokens equal `generate`'s, and a seeded
sample draws the same random stream (tested on CPU in fp32). With `seeds`, each row samples by
Gumbel-max with its own noise (lab.intervene.sampling_noise), whatever else is in the batch. Steering hooks get absolute positions from the static cache's
device-side length, which a replayed graph recomputes (lab.intervene.steering._PositionTracker).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass

import torch

from lab.core.errors import BadInput
from lab.intervene.finite import FiniteGuard
from lab.models import ModelLike
from lab.intervene.sampling_noise import pick
from lab.intervene.steering import Intervention, steer

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
LENGTH_BUCKET = 64  # prompt widths and new-token counts are rounded up to this on CUDA
MAX_RUNNERS = 3  # captured graphs kept (each holds a KV cache)


@dataclass(frozen=True)
class Sampling:
    """What `generate` is asked for, in its own terms."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    min_new_tokens: int | None = None

    def hf_kwargs(self, pad_id: int, eos_id: int | list[int] | None) -> dict:
        return dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                    temperature=self.temperature if self.do_sample else None,
                    top_p=self.top_p if self.do_sample else None, top_k=None,
                    min_new_tokens=self.min_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id)


def hf_generate(model: ModelLike, ids: torch.Tensor, mask: torch.Tensor, sampling: Sampling, interventions: tuple = (),
                eos_id: int | list[int] | None = None, **extra) -> torch.Tensor:
    """The reference path: `model.hf.generate` under the steering hooks. Returns the new tokens
    (`NonFiniteLogits` if any row's scores went nan: lab.intervene.finite)."""
    from transformers import LogitsProcessorList

    pad = model.tokenizer.pad_token_id
    guard = FiniteGuard()
    with torch.inference_mode(), steer(model, *interventions, prompt_width=ids.shape[1]):
        out = model.hf.generate(input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([guard]),
                                **sampling.hf_kwargs(pad, eos_id), **extra)
    guard.check(model, ids.shape[0])
    return out[:, ids.shape[1]:]


def _bucket(n: int, buckets: tuple[int, ...]) -> int:
    return next((b for b in buckets if b >= n), -(-n // buckets[-1]) * buckets[-1])


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class _Runner:
    """A static cache, its input/output buffers and (on CUDA) the captured decode step."""

    def __init__(self, model: ModelLike, batch: int, width: int, length: int, interventions: tuple, graph: bool):
        from transformers import StaticCache

        self.model, self.batch, self.width, self.length = model, batch, width, length
        self.interventions = interventions  # held so their ids in the runner key stay valid
        device = model.device
        self.cache = StaticCache(config=model.hf.config, max_cache_len=length)
        self.tokens = torch.zeros(batch, length, dtype=torch.long, device=device)
        self.valid = torch.ones(batch, length, dtype=torch.bool, device=device)  # key columns that are not padding
        self.real_len = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # column of the token fed to the next step
        self.columns = torch.arange(length, device=device)
        self.feed = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.logits = torch.zeros(batch, model.hf.config.vocab_size, dtype=torch.float32, device=device)
        self.cache_kw = "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"
        self.eager_mask = model.hf.config._attn_implementation == "eager"
        self.use_graph = graph
        self.graph: torch.cuda.CUDAGraph | None = None

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Prefill (eager, HF's own mask) into the reset cache; logits of the last prompt token."""
        self.cache.reset()
        b, p = ids.shape
        self.tokens[:b, :p].copy_(ids)
        self.valid[:b, :p].copy_(mask.bool())
        self.valid[:b, p:] = True
        self.real_len[:b, 0].copy_(mask.sum(-1))
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate computes them
        out = self.model.hf(input_ids=ids, attention_mask=mask, position_ids=positions,
                            **{self.cache_kw: self.cache}, use_cache=True, logits_to_keep=1)
        self.logits.copy_(out.logits[:, -1].float())
        self.pos.fill_(p)

    def _step(self) -> None:
        """One decode step on the static buffers: no host reads, so it can be captured."""
        keys = (self.valid & (self.columns <= self.pos)).view(self.batch, 1, 1, self.length)
        if self.eager_mask:
            keys = torch.zeros(keys.shape, dtype=self.model.dtype, device=keys.device).masked_fill(
                ~keys, torch.finfo(self.model.dtype).min)
        positions = self.real_len + (self.pos - self.width)
        out = self.model.hf(input_ids=self.feed, attention_mask=keys, position_ids=positions,
                            **{self.cache_kw: self.cache}, use_cache=True, logits_to_keep=1)
        self.logits.copy_(out.logits[:, -1].float())
        self.pos.add_(1)

    def step(self) -> None:
        if not self.use_graph:
            return self._step()
        if self.graph is None:
            self._capture()
        self.graph.replay()

    def _capture(self) -> None:
        """Warm up on a side stream (as CUDA graphs require), then capture one step.

        Capture runs the step for real: buffers are restored afterwards so the caller's
        decode continues from where it was."""
        saved = (self.pos.clone(), self.cache.layers[0].cumulative_length.clone(), self.logits.clone())
        # the model's GPU, not the process's current one: a rank on cuda:1 whose current device is still
        # cuda:0 would capture on a cuda:0 stream while its kernels run on cuda:1 (capture error)
        with torch.cuda.device(self.pos.device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step()
                self._restore(saved)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()
            self._restore(saved)

    def _restore(self, saved) -> None:
        self.pos.copy_(saved[0])
        for layer in self.cache.layers:
            layer.cumulative_length.copy_(saved[1])
        self.logits.copy_(saved[2])


_RUNNERS: "OrderedDict[tuple, _Runner]" = OrderedDict()


def release() -> None:
    """Drop the kept graphs and their KV caches (GPU memory)."""
    _RUNNERS.clear()


def unsupported(model) -> str | None:
    """Why the fast path cannot run this model (None if it can). Its mask is full causal attention
    over a static cache, and a graph needs the whole model on one device."""
    config = model.hf.config
    if config._attn_implementation not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation!r} (fast decode supports sdpa, eager)"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"layer types {sorted(kinds)} (fast decode supports full attention only)"
    if len({p.device for p in model.hf.parameters()}) > 1:
        return "a model spread over several devices"
    return None


def _runner(model: ModelLike, batch: int, width: int, length: int, interventions: tuple, graph: bool) -> _Runner:
    if not graph:  # without a graph there is nothing to reuse; keep no cache alive
        return _Runner(model, batch, width, length, interventions, graph)
    # a graph replays the kernels (and LoRA tensors) it captured: switching adapters in place on the same
    # HF module must not reuse it, so the key holds the adapters' state, not only the module
    key = (id(model.hf), getattr(model, "weights_state", None), model.hf.config._attn_implementation, batch, width,
           length, tuple(id(iv) for iv in interventions))
    if key not in _RUNNERS:
        while len(_RUNNERS) >= MAX_RUNNERS:
            _RUNNERS.popitem(last=False)
        _RUNNERS[key] = _Runner(model, batch, width, length, interventions, graph)
    _RUNNERS.move_to_end(key)
    return _RUNNERS[key]


def fast_generate(model: ModelLike, ids: torch.Tensor, mask: torch.Tensor, sampling: Sampling,
                  interventions: tuple[Intervention, ...] = (), eos_id: int | list[int] | None = None,
                  graph: bool | None = None, bucket: bool | None = None, eos_every: int = 8,
                  seeds: torch.Tensor | None = None) -> torch.Tensor:
    """New tokens (batch, <= max_new_tokens) for left-padded `ids`, as `hf_generate` would return them.

    `graph`: capture the decode step as a CUDA graph (default: on CUDA); `bucket`: pad the batch
    and the prompt width up to buckets so graphs are reused (default: with graphs; extra rows and
    columns are masked padding, so tokens do not change, tested). Finished rows get the
    pad token, and the output ends at the step where the last row finished, like `generate`.
    `seeds` (one per row): sample by Gumbel-max with each row's own noise (lab.intervene.sampling_noise),
    independent of the batch; without them, HF's sampler on the global generator (as `generate`).
    """
    reason = unsupported(model)
    if reason:
        raise BadInput(f"decode='fast' cannot run {reason}: use decode='hf'")
    hf, pad = model.hf, model.tokenizer.pad_token_id
    graph = model.device.type == "cuda" if graph is None else graph
    bucket = graph if bucket is None else bucket
    b, p = ids.shape
    n = sampling.max_new_tokens
    # HF's own processors and special tokens, built as `generate` builds them (private API:
    # constraints.txt pins the transformers version this is tested against)
    config, _ = hf._prepare_generation_config(None, **sampling.hf_kwargs(pad, eos_id))
    hf._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=ids.device, batch_size=b)
    processors = hf._get_logits_processor(generation_config=config, input_ids_seq_length=p, encoder_input_ids=ids,
                                          device=ids.device, model_kwargs={})
    eos = config._eos_token_tensor
    eos = None if eos is None else eos.to(ids.device).view(-1)
    if bucket:  # pad shapes up to buckets so captured graphs are reused across batches
        big_b, width = _bucket(b, BATCH_BUCKETS), _round_up(p, LENGTH_BUCKET)
        length = width + _round_up(n, LENGTH_BUCKET)
        ids_b = torch.full((big_b, width), pad, dtype=ids.dtype, device=ids.device)
        mask_b = torch.zeros((big_b, width), dtype=mask.dtype, device=ids.device)
        ids_b[:b, width - p:], mask_b[:b, width - p:] = ids, mask
        ids_b[b:], mask_b[b:] = ids_b[0], mask_b[0]  # filler rows: copies of row 0, discarded
    else:
        big_b, width, length, ids_b, mask_b = b, p, p + n, ids, mask
    run = _runner(model, big_b, width, length, interventions, graph)
    unfinished = torch.ones(b, dtype=torch.bool, device=ids.device)
    alive = torch.ones(n, dtype=torch.bool, device=ids.device)  # any row unfinished after step t
    first = width - p  # the caller's columns start here in run.tokens
    steps = n
    guard = FiniteGuard()
    with torch.inference_mode(), steer(model, *interventions, prompt_width=width):
        run.start(ids_b, mask_b)
        for t in range(n):
            scores = guard.apply(processors(run.tokens[:b, first: width + t], run.logits[:b]), t)
            if sampling.do_sample and seeds is not None:
                nxt = pick(scores, seeds, torch.full_like(seeds, t))
            elif sampling.do_sample:
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = scores.argmax(-1)
            if eos is not None:
                nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
                unfinished &= ~torch.isin(nxt, eos)
                alive[t] = unfinished.any()
            run.tokens[:b, width + t] = nxt
            run.feed[:b, 0] = nxt
            if eos is not None and (t + 1) % eos_every == 0 and not bool(alive[t]):
                steps = t + 1
                break
            if t + 1 < n:
                run.step()
    guard.check(model, b)
    out = run.tokens[:b, width: width + steps]
    if eos is not None:
        done = (~alive[:steps]).nonzero()
        if len(done):
            out = out[:, : int(done[0]) + 1]
    return out.clone()
