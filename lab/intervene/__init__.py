"""Intervene: run a model with its residual stream edited, and sample its answers.

Main nouns:

- `Intervention`: a pure description of an edit at some layers (`blocks.{L}.hook_resid_post`):
  add a direction (`x + alpha v`), ablate it (`x - (x.v) v`) or both (`ablate_add`), at all,
  prompt or generated positions. `from_direction(direction, model, ...)` is the one door for a
  fitted `lab.directions.Direction` (its provenance is checked against the model);
  `random_like(intervention, seed)` is the matched random control.
- `steer(model, *interventions)`: a context manager of torch hooks on the HF decoder layers that
  applies them to plain forwards and to generation at HF speed, KV cache included;
  `tl_hooks(...)` is the same edit as TransformerLens hook functions (tested to agree).
- `GenerationConfig` and `generate_answers(model, examples, config, interventions, out_path)`:
  batched, seeded, resumable answer sampling; every row records the settings that made it.
  Decode paths (`decode_path`): HF's `generate`; the fast path (`fast_generate`: a static KV
  cache and, on CUDA, one captured CUDA-graph step); continuous batching (`ContinuousSampler`,
  the default on CUDA: slots refilled as rows end). Fast and continuous rows draw their own
  counter-based noise (`sampling_noise`), so a row's answer does not depend on its batch.
  Every path raises `NonFiniteLogits` rather than sample from nan scores (`finite`).
- data-parallel runs under torchrun (`Ranks`, `build_cache_parallel`, `sample_answers`): each
  rank takes every world-th batch of the one-process plan, so the files are the ones one
  process writes (`torchrun --nproc-per-node N -m lab.intervene.shards ...`).

Getting started::

    from lab.intervene import GenerationConfig, Intervention, from_direction, generate_answers, steer

    add = from_direction(direction, model, at=12, op="add", alpha=8.0)
    with steer(model, add):
        logits = model.hf(ids).logits                # a steered forward
    rows = generate_answers(model, examples, GenerationConfig(max_new_tokens=64), (add,))

Teacher-forced log-probs of answers, plain or under interventions (`answer_logprobs`,
`logprobs_under`), and the coherence guard every steering result is shown beside
(`coherence_change` on `neutral_pairs`) live in `logprobs`.

Modules: `steering`, `generate`, `decode`, `shards`, `logprobs`; the continuous sampler's parts
`sampler`, `slots`, `row_choice` (per-row token choice), `sampling_noise`, `finite` and
`answers_file` (append, resume and settle answers files).
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "steering": """Intervention OPS POSITIONS from_direction direction_vectors check_provenance random_like
        random_vectors_like steer tl_hooks""",
    "generate": "GenerationConfig AnswerRun DECODE_PATHS decode_path generate_answers",
    "decode": "Sampling hf_generate fast_generate release",
    "sampler": "ContinuousSampler plan_slots",
    "finite": "FiniteGuard",
    "shards": "Ranks build_cache_parallel sample_answers",
    "logprobs": "answer_logprobs neutral_pairs logprobs_under coherence_change",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
