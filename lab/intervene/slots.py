"""Slots for continuous batching: a KV cache with one row per slot, each row at its own columns.

Layout: every layer keeps keys and values of shape (slots, kv_heads, length, head_dim). A row's
prompt occupies columns 0..p-1 of its slot (no padding), its k-th new token column p+k-1, and
its positions are its columns, so a row computes what it would alone (up to the rounding of
other matmul shapes). Rows of different lengths share a decode step: each writes its token's
keys at its own column (`scatter_` at the slot's length) and attends to columns <= its length
(a boolean mask per row). A slot is refilled by writing a new prompt over columns 0..p-1;
stale columns beyond are masked until overwritten. No paging and no compaction is needed while
slots are busy; in the tail (no prompts waiting) the rows still running are moved to the lowest
slots so a smaller step (a smaller captured graph) serves them. The cost of this layout is that
a step reads all `length` columns of its slots (sdpa with a mask cannot skip masked columns).

Prefill runs HF's own forward on left-padded new prompts with a DynamicCache (HF's masks and
positions, as `generate`), then copies each row's real columns into its slot. Decode steps run
the model on one token per slot with emlab's steering hooks; on CUDA the step, including the
token choice and the bookkeeping, is captured once per slot bucket as a CUDA graph and
replayed. Every decode-step token is a generated token, so steering runs with prompt_width=0
there; prefill runs with the padded prompt width (all of its tokens are prompt).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache

from lab.models.hooks import left_pad
from lab.models import ModelLike
from lab.intervene.row_choice import RowChoice
from lab.intervene.steering import steer

SLOT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512)


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a decoder config."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), int(getattr(config, "num_key_value_heads", None) or heads), head_dim


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    layers, heads, head_dim = kv_shape(config)
    return 2 * layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


class _SlotLayer(CacheLayerMixin):
    is_compileable = True

    def __init__(self, owner: "SlotCache", shape: tuple, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.owner = owner
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.is_initialized, self.device = True, device

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write each row's new token at its slot's length; return the first `batch` slots."""
        b = key_states.shape[0]
        index = self.owner.write_at[:b].view(b, 1, 1, 1).expand(key_states.shape)
        keys, values = self.keys[:b], self.values[:b]
        keys.scatter_(2, index, key_states)
        values.scatter_(2, index, value_states)
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self):
        return self.owner.no_prompt

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class SlotCache(Cache):
    """The slots' keys and values, one `_SlotLayer` per decoder layer; `write_at` is the slots' lengths."""

    def __init__(self, config, slots: int, length: int, dtype: torch.dtype, device: torch.device,
                 write_at: torch.Tensor):
        n_layers, heads, head_dim = kv_shape(config)
        self.write_at = write_at
        # the steering position tracker reads the cache's length: a decode token is never a prompt token
        self.no_prompt = torch.zeros((), dtype=torch.long, device=device)
        super().__init__(layers=[_SlotLayer(self, (slots, heads, length, head_dim), dtype, device)
                                 for _ in range(n_layers)])

    def get_seq_length(self, layer_idx: int = 0):
        return self.no_prompt


class Slots:
    """The slots' cache and per-slot state on the device, the prefill and the decode step.

    State per slot: the token fed to the next step, the slot's length (its tokens in the cache,
    also the column and position of the fed token), the tokens drawn so far (`step`), the row's
    seed, `live` (occupied and still drawing), the drawn tokens, and the seen-token mask when a
    repetition penalty needs it. The host owns which job sits in which slot.
    """

    def __init__(self, model: ModelLike, n: int, length: int, max_new: int, choice: RowChoice, interventions: tuple,
                 graph: bool):
        hf, dev = model.hf, model.device
        self.model, self.n, self.length_cap, self.max_new = model, n, length, max_new
        self.choice, self.interventions, self.graph = choice, tuple(interventions), graph
        self.pad = model.tokenizer.pad_token_id
        self.feed = torch.full((n, 1), self.pad, dtype=torch.long, device=dev)
        self.length = torch.zeros(n, dtype=torch.long, device=dev)
        self.step = torch.zeros(n, dtype=torch.long, device=dev)
        self.seed = torch.zeros(n, dtype=torch.long, device=dev)
        self.limit = torch.full((n,), max_new, dtype=torch.long, device=dev)  # new tokens a row may draw
        self.live = torch.zeros(n, dtype=torch.bool, device=dev)
        self.out = torch.full((n, max_new), self.pad, dtype=torch.long, device=dev)
        self.seen = torch.zeros((n, hf.config.vocab_size), dtype=torch.bool, device=dev) if choice.needs_seen else None
        self.cache = SlotCache(hf.config, n, length, model.dtype, dev, self.length)
        self.columns = torch.arange(length, device=dev)
        self.cache_kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
        self.eager_mask = hf.config._attn_implementation == "eager"
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    # ------------------------------------------------------------------ prefill

    def admit(self, slots: list[int], prompts: list[np.ndarray], seeds: list[int], limits: list[int] | None = None
              ) -> None:
        """Prefill `prompts` into `slots` and draw each row's first token (step 0). `limits`: new tokens
        each row may draw (default max_new; benchmarks give random-weight rows realistic lengths)."""
        hf, dev = self.model.hf, self.model.device
        ids, mask, _ = left_pad([torch.from_numpy(t) for t in prompts], self.pad)
        ids, mask = ids.to(dev), mask.to(dev)
        width = ids.shape[1]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate computes them
        prefill = DynamicCache(config=hf.config)
        with torch.inference_mode(), steer(self.model, *self.interventions, prompt_width=width):
            out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, **{self.cache_kw: prefill},
                     use_cache=True, logits_to_keep=1)
        lengths = torch.tensor([len(t) for t in prompts], device=dev)
        index = torch.tensor(slots, dtype=torch.long, device=dev)
        rows = torch.arange(len(prompts), device=dev).repeat_interleave(lengths)
        dst = torch.cat([torch.arange(int(n), device=dev) for n in lengths])  # column in the slot
        src = dst + (width - lengths).repeat_interleave(lengths)  # column in the left-padded batch
        with torch.inference_mode():
            for layer, new in zip(self.cache.layers, prefill.layers):
                for mine, theirs in ((layer.keys, new.keys), (layer.values, new.values)):
                    mine.transpose(1, 2)[index.repeat_interleave(lengths), dst] = theirs.transpose(1, 2)[rows, src]
            self.seed[index] = torch.tensor(seeds, dtype=torch.long, device=dev)
            self.step[index] = 0
            self.length[index] = lengths
            self.limit[index] = torch.tensor(limits or [self.max_new] * len(slots), dtype=torch.long, device=dev)
            seen = None
            if self.seen is not None:
                self.seen[index] = False
                self.seen[index.repeat_interleave(lengths), ids[rows, src]] = True
                seen = self.seen[index]
            token = self.choice(out.logits[:, -1], self.seed[index], self.step[index], seen)
            self.out[index] = self.pad
            self.out[index, 0] = token
            if self.seen is not None:
                self.seen[index, token] = True
            self.live[index] = ~(torch.isin(token, self.choice.eos) | (self.limit[index] <= 1))
            self.step[index] = 1
            self.feed[index, 0] = token

    # ------------------------------------------------------------------ decode

    def _step(self, b: int) -> None:
        """One decode step of the first `b` slots, on the static buffers only (capturable)."""
        length = self.length[:b]
        keys = (self.columns.view(1, -1) <= length.view(-1, 1)).view(b, 1, 1, -1)
        if self.eager_mask:
            keys = torch.zeros(keys.shape, dtype=self.model.dtype, device=keys.device).masked_fill(
                ~keys, torch.finfo(self.model.dtype).min)
        out = self.model.hf(input_ids=self.feed[:b], attention_mask=keys, position_ids=length.view(b, 1),
                            **{self.cache_kw: self.cache}, use_cache=True, logits_to_keep=1)
        live, step = self.live[:b], self.step[:b]
        seen = None if self.seen is None else self.seen[:b]
        token = self.choice(out.logits[:, -1], self.seed[:b], step, seen)
        token = torch.where(live, token, self.feed[:b, 0])  # a free or finished slot keeps what it had
        column = step.clamp(max=self.max_new - 1).view(b, 1)
        self.out[:b].scatter_(1, column, torch.where(live.view(b, 1), token.view(b, 1), self.out[:b].gather(1, column)))
        if seen is not None:
            seen.scatter_(1, token.view(b, 1), live.view(b, 1) | seen.gather(1, token.view(b, 1)))
        self.feed[:b, 0] = token
        moved = live.long()
        length.add_(moved)
        step.add_(moved)
        live &= ~(torch.isin(token, self.choice.eos) | (step >= self.limit[:b]))

    def step_rows(self, b: int) -> None:
        """Advance the first `b` slots by one token (replaying the captured graph on CUDA)."""
        with torch.inference_mode():
            if not self.graph:
                with steer(self.model, *self.interventions, prompt_width=0):
                    self._step(b)
                return
            if b not in self.graphs:
                self._capture(b)
            self.graphs[b].replay()

    def _state(self) -> list[torch.Tensor]:
        return [t for t in (self.feed, self.length, self.step, self.live, self.out, self.seen) if t is not None]

    def _capture(self, b: int) -> None:
        """Warm up on a side stream, then capture one step of `b` slots; the state is restored after
        both, since capturing runs the step for real (the keys it writes are the ones the next real
        step writes at the same columns)."""
        saved = [t.clone() for t in self._state()]
        with torch.cuda.device(self.length.device), steer(self.model, *self.interventions, prompt_width=0):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step(b)
                self._restore(saved)
            torch.cuda.current_stream().wait_stream(stream)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._step(b)
            self._restore(saved)
        self.graphs[b] = graph

    def _restore(self, saved: list[torch.Tensor]) -> None:
        for t, s in zip(self._state(), saved):
            t.copy_(s)

    # ------------------------------------------------------------------ host side

    def width(self, occupied: int) -> int:
        """Slots a step runs for `occupied` rows packed at the front: a graph bucket, or exactly them."""
        if not self.graph:
            return occupied
        return min(next((s for s in SLOT_BUCKETS if s >= occupied), self.n), self.n)

    def move(self, src: list[int], dst: list[int]) -> None:
        """Move rows from slots `src` to free slots `dst` (their cache columns and state)."""
        with torch.inference_mode():
            s = torch.tensor(src, dtype=torch.long, device=self.length.device)
            d = torch.tensor(dst, dtype=torch.long, device=self.length.device)
            for layer in self.cache.layers:
                layer.keys[d] = layer.keys[s]
                layer.values[d] = layer.values[s]
            for t in (*self._state(), self.seed, self.limit):
                t[d] = t[s]
            self.live[s] = False

    def read(self, slots: list[int]) -> tuple[list[bool], list[list[int]]]:
        """Whether each slot is still live, and the tokens drawn by the finished ones (one transfer)."""
        index = torch.tensor(slots, dtype=torch.long, device=self.length.device)
        live = self.live[index].tolist()
        ended = [s for s, alive in zip(slots, live) if not alive]
        tokens: list[list[int]] = []
        if ended:
            e = torch.tensor(ended, dtype=torch.long, device=self.length.device)
            counts, rows = self.step[e].tolist(), self.out[e].tolist()
            tokens = [row[:n] for row, n in zip(rows, counts)]
        return live, tokens
