"""How a row's next token is chosen, row by row: the processors `generate` would apply, then greedy
argmax or Gumbel-max with the row's own noise (lab.intervene.sampling_noise).

The processors are the ones HF builds for the request (`_get_logits_processor`, with the model's
generation config merged in, as `generate` builds them), in HF's order. Those that look at the
scores only (temperature, top-k, top-p, min-p, typical, epsilon, eta) are HF's own objects applied
to each row's scores. The two that read the token history are redone per row, so a row is
processed as if it ran alone:

* repetition penalty: a (rows, vocab) mask of the tokens each row has seen (prompt and answer),
  the same arithmetic as HF's gather/scatter. HF's padded batches also penalise the pad token in
  padded rows; a row alone (and this path) does not.
* min_new_tokens: EOS is masked while the row has drawn fewer tokens than asked, counted per row.

Anything else HF would apply is refused with one line (the request needs decode='fast' or 'hf').
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lab.core.errors import BadInput
from lab.intervene.finite import FiniteGuard
from lab.intervene.sampling_noise import pick

_SCORE_ONLY = {"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
               "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper"}


@dataclass
class RowChoice:
    """Per-row token choice; `needs_seen` says whether callers must keep the seen-token mask."""

    do_sample: bool
    stages: list  # ("warp", hf_object) | ("repeat", penalty) | ("min_new", n, eos ids tensor)
    eos: torch.Tensor  # stop ids, on the model's device
    guard: FiniteGuard  # flags rows whose scores are not finite (checked by the sampler before answers leave)

    @property
    def needs_seen(self) -> bool:
        return any(s[0] == "repeat" for s in self.stages)

    @classmethod
    def build(cls, model, sampling, eos: list[int]) -> "RowChoice":
        """The stages HF would run for `sampling` (a lab.intervene.decode.Sampling) on `model`."""
        hf, device = model.hf, model.device
        pad = model.tokenizer.pad_token_id
        config, _ = hf._prepare_generation_config(None, **sampling.hf_kwargs(pad, eos))
        ids = torch.zeros(1, 1, dtype=torch.long, device=device)
        hf._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=device, batch_size=1)
        processors = hf._get_logits_processor(generation_config=config, input_ids_seq_length=1, encoder_input_ids=ids,
                                              device=device, model_kwargs={})
        stages = []
        for proc in processors:
            kind = type(proc).__name__
            if kind in _SCORE_ONLY:
                stages.append(("warp", proc))
            elif kind == "RepetitionPenaltyLogitsProcessor" and proc.prompt_ignore_length is None:
                stages.append(("repeat", float(proc.penalty)))
            elif kind == "MinNewTokensLengthLogitsProcessor":
                stages.append(("min_new", int(proc.min_new_tokens), proc.eos_token_id.to(device).view(-1)))
            else:
                raise BadInput(f"continuous decoding cannot apply {kind} per row: use decode='fast' or 'hf'")
        return cls(bool(config.do_sample), stages, torch.tensor(eos, dtype=torch.long, device=device),
                   FiniteGuard(device))

    def process(self, scores: torch.Tensor, steps: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """The processed float32 scores of rows that have drawn `steps` tokens and seen `seen`."""
        for stage in self.stages:
            if stage[0] == "warp":
                scores = stage[1](None, scores)
            elif stage[0] == "repeat":
                penalty = stage[1]
                scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
            else:
                _, n, eos = stage
                is_eos = torch.isin(torch.arange(scores.shape[-1], device=scores.device), eos)
                scores = torch.where((steps < n).view(-1, 1) & is_eos, -math.inf, scores)
        return scores

    def __call__(self, logits: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor,
                 seen: torch.Tensor | None = None) -> torch.Tensor:
        """Next token of each row: greedy, or Gumbel-max with noise keyed by (seed, step)."""
        scores = self.guard.apply(self.process(logits.float(), steps, seen), steps)
        return pick(scores, seeds, steps) if self.do_sample else scores.argmax(-1)
