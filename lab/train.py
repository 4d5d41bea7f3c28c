"""LoRA training of model organisms: chat JSONL in, PEFT adapter folders out.

Loss is on assistant tokens only. Checkpoints follow seed 003's schedule: `k` evenly
spaced checkpoints in the first epoch (EM appears early), then one at the end of every
epoch. Each checkpoint is a PEFT folder plus the optimizer and RNG state, published
atomically, so a killed run resumes from the last one and ends with the same adapter as
an uninterrupted run (data order is a pure function of seed and epoch).

Layout of `out_dir`:
    checkpoints/step-000012/   adapter_config.json, adapter_model.safetensors,
                               emlab_adapter.json, trainer_state.pt
    adapter/                   the final adapter (same files, no trainer state)
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lab.data import DEFAULT_SYSTEM_PROMPT, ROLE_CODE, ChatExample, render
from lab.errors import BadInput
from lab.io import atomic_dir, write_json_atomic
from lab.models import ADAPTER_META, ModelLike

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Everything that determines an adapter (hashing it keys the study's stage cache)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ATTENTION
    rslora: bool = False
    rank1_down_proj_layer: int | None = None  # the Model Organisms paper's minimal organism
    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 0
    checkpoints_first_epoch: int = 4
    max_steps: int | None = None  # stop early (quick profiles); the schedule still applies
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    weight_decay: float = 0.0
    warmup_steps: int = 0

    def lora_config(self, n_layers: int):
        from peft import LoraConfig

        if self.rank1_down_proj_layer is not None:
            layer = self.rank1_down_proj_layer
            if not 0 <= layer < n_layers:
                raise BadInput(f"rank1_down_proj_layer {layer} out of range (0..{n_layers - 1})")
            return LoraConfig(r=1, lora_alpha=self.alpha, lora_dropout=self.dropout,
                              target_modules=["down_proj"], layers_to_transform=[layer],
                              use_rslora=self.rslora, task_type="CAUSAL_LM")
        unknown = set(self.target_modules) - set(ATTENTION + MLP)
        if unknown:
            raise BadInput(f"unknown target modules {sorted(unknown)} (choose from {ATTENTION + MLP})")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), use_rslora=self.rslora,
                          task_type="CAUSAL_LM")


@dataclass
class TrainResult:
    adapter_dir: Path
    checkpoints: list[Path]
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0


def checkpoint_steps(steps_per_epoch: int, epochs: int, k: int) -> list[int]:
    """Seed 003's schedule: k evenly spaced in epoch 1, then each epoch's end."""
    first = {max(1, round(steps_per_epoch * j / k)) for j in range(1, k + 1)} if k > 0 else set()
    ends = {steps_per_epoch * e for e in range(1, epochs + 1)}
    return sorted(first | ends)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _collate(tokens: list[np.ndarray], roles: list[np.ndarray], idx: np.ndarray, pad_id: int):
    length = max(len(tokens[i]) for i in idx)
    input_ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), length), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), length), dtype=torch.long)
    for row, i in enumerate(idx):
        t = torch.from_numpy(tokens[i])
        input_ids[row, : len(t)] = t
        mask[row, : len(t)] = 1
        answer = torch.from_numpy(roles[i] == ROLE_CODE["assistant"])
        labels[row, : len(t)] = torch.where(answer, t, torch.tensor(-100))
    return input_ids, mask, labels


def _latest_checkpoint(out_dir: Path) -> Path | None:
    done = sorted(p for p in (out_dir / "checkpoints").glob("step-*") if (p / "trainer_state.pt").exists())
    return done[-1] if done else None


def train_lora(
    model: ModelLike,
    examples: list[ChatExample],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `examples`, resuming from `out_dir` if it holds checkpoints.

    `model` is left unchanged (training happens on a PEFT wrapper whose LoRA weights are
    removed at the end). `on_step(step, total, loss)` reports progress.
    """
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not examples:
        raise BadInput("empty training set")
    if not any(ex.has_response for ex in examples):
        raise BadInput("training examples need an assistant turn (loss is on assistant tokens)")
    prompts = render(examples, model.tokenizer, config.system_prompt, max_tokens=config.max_length, truncate=True)
    pad = model.tokenizer.pad_token_id
    per_update = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(examples) / per_update)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    schedule = [s for s in checkpoint_steps(steps_per_epoch, config.epochs, config.checkpoints_first_epoch) if s <= total]
    if total not in schedule:
        schedule.append(total)

    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model.hf, config.lora_config(model.n_layers))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_at = lambda s: config.lr * min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else config.lr

    step, losses, resumed_from = 0, [], 0
    latest = _latest_checkpoint(out_dir)
    if latest is not None:
        state = torch.load(latest / "trainer_state.pt", weights_only=False)
        if _resumable(state["config"]) != _resumable(asdict(config)):
            raise BadInput(f"{out_dir} holds checkpoints of a different training config; use a new folder")
        set_peft_model_state_dict(peft_model, load_file(str(latest / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, losses, resumed_from = state["step"], state["losses"], state["step"]

    checkpoints = [out_dir / "checkpoints" / f"step-{s:06d}" for s in schedule if s <= step]
    device = model.device
    try:
        while step < total:
            epoch, within = divmod(step, steps_per_epoch)
            batches = _batches(len(examples), config.batch_size, config.seed, epoch)
            micro = batches[within * config.grad_accum : (within + 1) * config.grad_accum]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            n_answer = sum(int((prompts.roles[i] == ROLE_CODE["assistant"]).sum()) for b in micro for i in b)
            step_loss = 0.0
            for idx in micro:
                input_ids, mask, labels = (t.to(device) for t in _collate(prompts.tokens, prompts.roles, idx, pad))
                logits = peft_model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
                target = labels[:, 1:]
                loss_sum = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100, reduction="sum")
                (loss_sum / max(n_answer, 1)).backward()
                step_loss += loss_sum.item() / max(n_answer, 1)
            optimizer.step()
            step += 1
            losses.append(step_loss)
            if on_step:
                on_step(step, total, step_loss)
            if step in schedule:
                checkpoints.append(_save_checkpoint(peft_model, optimizer, model, config, out_dir, step, losses))
        final = out_dir / "adapter"
        with atomic_dir(final) as tmp:
            for f in checkpoints[-1].iterdir():
                if f.name != "trainer_state.pt":
                    shutil.copy2(f, tmp / f.name)
    finally:
        peft_model.unload()  # restore the base model's own modules, weights untouched
        model.hf.eval()
    return TrainResult(final, checkpoints, losses, step, resumed_from)


def _save_checkpoint(peft_model, optimizer, model: ModelLike, config: TrainConfig,
                     out_dir: Path, step: int, losses: list[float]) -> Path:
    final = out_dir / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        peft_model.save_pretrained(str(tmp))
        write_json_atomic(tmp / ADAPTER_META, {
            "base_fingerprint": model.info["base_fingerprint"],
            "base_model": model.name,
            "step": step,
            "config": asdict(config),
            "losses": losses,
        })
        torch.save({"step": step, "losses": losses, "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(), "config": asdict(config)}, tmp / "trainer_state.pt")
    return final


def _resumable(config: dict) -> dict:
    """The config fields that must match to continue a run (max_steps may grow)."""
    return {k: v for k, v in config.items() if k != "max_steps"}


def adapter_meta(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_META
    return json.loads(path.read_text()) if path.exists() else {}
