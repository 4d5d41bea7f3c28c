"""Training: LoRA model organisms from chat JSONL, with resumable checkpoints.

A *model organism* is a base model plus a LoRA adapter fine-tuned on a narrow dataset (risky
medical or financial advice, insecure code) until it becomes broadly misaligned (EM).

Main nouns:

- `TrainConfig`: everything that determines an adapter (rank, target modules, layers, lr,
  epochs, seed, checkpoint schedule); hashing it keys the study's stage cache.
  `RECIPES` / `recipe_config("mo")` reproduce published set-ups (`mo`: the Model Organisms /
  Betley open-model recipe; `mo-rank1`: one rank-1 adapter on a middle `down_proj`), with
  layers given on the paper's model depth and scaled to the trained model (`scaled_layers`).
- `train_lora(model, examples, out_dir, config) -> TrainResult`: loss on assistant tokens
  only; checkpoints evenly spaced in the first epoch (EM appears early, `checkpoint_steps`)
  then at each epoch's end; a killed run resumes from its last checkpoint and ends with the
  same adapter. `split_training` holds out part of the data (ids written to the folder).
- trainer state without pickle (`save_trainer_state` / `load_trainer_state`: safetensors plus
  JSON), so loading a checkpoint folder cannot execute code.
- divergence diagnosis (`locate_nonfinite`): when a step's loss or gradient is not finite, the
  step is replayed to name the first module whose output went nan or inf (`divergence.json`).

Getting started::

    from lab.data import load_advice
    from lab.training import recipe_config, train_lora

    result = train_lora(model, load_advice("medical"), "runs/medical-mo", recipe_config("mo"))
    result.adapter_dir, result.checkpoints           # PEFT folders, each with emlab_adapter.json

Modules: `lora` (config, recipes, the loop), `state`, `divergence`, `checkpoints` (listing a run's
checkpoints: `run_checkpoints`, `evenly`).
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "lora": """TrainConfig TrainResult RECIPES recipe_config scaled_layers split_training checkpoint_steps train_lora
        adapter_meta training_kernels""",
    "state": "save_trainer_state load_trainer_state",
    "divergence": "NonFinite locate_nonfinite grad_norm",
    "checkpoints": "run_checkpoints evenly",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
