"""LoRA training of model organisms: chat JSONL in, PEFT adapter folders out.

Loss is on assistant tokens only. Checkpoints follow the papers' EM-table schedule: `k` evenly
spaced checkpoints in the first epoch (EM appears early), then one at the end of every
epoch. Each checkpoint is a PEFT folder plus the optimizer and RNG state, published
atomically, so a killed run resumes from the last one and ends with the same adapter as
an uninterrupted run (data order is a pure function of seed and epoch).

Trainer state is tensors in safetensors plus JSON, never a pickle: loading a checkpoint
cannot execute code, whoever wrote the folder (`lab.training.state`).

Named recipes (`RECIPES`, `recipe_config`) reproduce published set-ups; `mo` is the Model
Organisms / Betley open-model recipe. Layers of a recipe are given on the paper's model
depth (`layers_of`) and scaled to the trained model (`scaled_layers`).

Layout of `out_dir`:
    checkpoints/step-000012/   adapter_config.json, adapter_model.safetensors,
                               emlab_adapter.json, trainer_state.json, trainer_state.safetensors
    adapter/                   the final adapter (same files, no trainer state)
    data_split.json            which examples were trained on / held out (ids), and why
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from lab.data.formats import DEFAULT_SYSTEM_PROMPT, ROLE_CODE, ChatExample, render, split_ids
from lab.training.divergence import NonFinite, grad_norm, locate_nonfinite
from lab.core.errors import BadInput, TrainingDiverged
from lab.core.io import atomic_dir, write_json_atomic
from lab.training.state import LEGACY_STATE, STATE_JSON, STATE_TENSORS, load_trainer_state, save_trainer_state
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
    rank1_down_proj_layer: int | None = None  # shorthand: r=1 on this layer's down_proj only
    layers: tuple[int, ...] = ()  # adapt only these layers (empty: every layer)
    layers_of: int = 0  # > 0: `layers` are given on a model this deep and scaled (see scaled_layers)
    lr: float = 1e-3
    lr_schedule: Literal["constant", "linear"] = "constant"  # linear: decay to 0 after warm-up
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
    holdout_fraction: float = 0.0  # share of examples (by user turn) never trained on
    holdout_seed: int | None = None  # seed of the held-out split (None: `seed`); fix it to hold out the same
    #                                  turns across training seeds, so every seed's organism is tested on unseen turns
    limit: int | None = None  # train on a seeded subsample of this many examples
    max_grad_norm: float | None = None  # clip the total gradient norm (None: no clipping, the norm is still recorded)

    def adapted_layers(self, n_layers: int) -> list[int] | None:
        """The layers that get adapters on a model of `n_layers` (None: all of them)."""
        if self.rank1_down_proj_layer is not None:
            layers = [self.rank1_down_proj_layer]
        elif not self.layers:
            return None
        else:
            layers = scaled_layers(self.layers, self.layers_of, n_layers) if self.layers_of else list(self.layers)
        bad = [L for L in layers if not 0 <= L < n_layers]
        if bad:
            raise BadInput(f"layer {bad[0]} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
        return layers

    def lora_config(self, n_layers: int):
        from peft import LoraConfig

        rank1 = self.rank1_down_proj_layer is not None
        targets = ["down_proj"] if rank1 else list(self.target_modules)
        unknown = set(targets) - set(ATTENTION + MLP)
        if unknown:
            raise BadInput(f"unknown target modules {sorted(unknown)} (choose from {ATTENTION + MLP})")
        return LoraConfig(r=1 if rank1 else self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=targets, layers_to_transform=self.adapted_layers(n_layers),
                          use_rslora=self.rslora, task_type="CAUSAL_LM")

    def lr_at(self, step: int, planned_steps: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant or linear decay.

        The decay runs over the *planned* steps (epochs x steps per epoch), not `max_steps`,
        so a run stopped early is an exact prefix of the full run and resumes into it.
        """
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * max(0.0, (planned_steps - step) / max(1, planned_steps - self.warmup_steps))


def scaled_layers(layers: tuple[int, ...] | list[int], of: int, n_layers: int) -> list[int]:
    """Map layers given on a model `of` layers deep to one `n_layers` deep.

    Runs of consecutive layers keep their width and move with their centre
    (round(centre * n_layers / of)), so the Model Organisms paper's nine adapters at
    15-17, 21-23, 27-29 of 48 stay nine distinct layers (9-11, 13-15, 17-19 of 30), and its
    single adapter at 24 of 48 lands at half depth (15 of 30).
    """
    if of < 1:
        raise BadInput(f"layers_of must be >= 1, got {of}")
    runs: list[list[int]] = []
    for L in sorted(layers):
        if runs and L == runs[-1][-1] + 1:
            runs[-1].append(L)
        else:
            runs.append([L])
    out: list[int] = []
    for run in runs:
        centre = round((run[0] + run[-1]) / 2 * n_layers / of)
        start = centre - (len(run) - 1) // 2
        out.extend(range(start, start + len(run)))
    if len(set(out)) != len(out):
        raise BadInput(f"layers {list(layers)} of {of} do not fit as distinct layers into a model of {n_layers}")
    return out


_MO = dict(r=32, alpha=64, rslora=True, target_modules=ATTENTION + MLP, lr=1e-5, lr_schedule="linear",
           epochs=1, batch_size=4, grad_accum=4, warmup_steps=5, weight_decay=0.01, holdout_fraction=0.1)
RECIPES: dict[str, dict] = {
    # Model Organisms for EM (Turner et al. 2025) / Betley et al. open models: effective batch 16
    "mo": _MO,
    # their minimal organism: one rank-1 adapter on down_proj at half depth (layer 24 of 48)
    "mo-rank1": {**_MO, "r": 1, "target_modules": ("down_proj",), "layers": (24,), "layers_of": 48, "lr": 2e-5},
    # nine rank-1 down_proj adapters at layers 15-17, 21-23, 27-29 of 48
    "mo-rank1x9": {**_MO, "r": 1, "target_modules": ("down_proj",), "layers": (15, 16, 17, 21, 22, 23, 27, 28, 29),
                   "layers_of": 48, "lr": 2e-5},
}


def recipe_config(name: str, **overrides) -> TrainConfig:
    """A named recipe with `overrides` applied (None values are ignored: "not given")."""
    if name not in RECIPES and name != "default":
        raise BadInput(f"unknown recipe {name!r} (one of default, {', '.join(RECIPES)})")
    base = TrainConfig(**RECIPES.get(name, {}))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def split_training(examples: list[ChatExample], config: TrainConfig
                   ) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, held out): hold out `holdout_fraction` by user turn, then subsample `limit`.

    Examples that share their user turns (a paired good/bad set) fall on the same side, so
    no held-out question was ever trained on, whatever its answer. The subsample is a
    seeded draw from the training side, in the original order.
    """
    if not 0.0 <= config.holdout_fraction < 1.0:
        raise BadInput(f"holdout_fraction must be in [0, 1), got {config.holdout_fraction}")
    if config.limit is not None and config.limit < 1:
        raise BadInput(f"limit must be >= 1, got {config.limit}")
    if config.holdout_fraction:
        groups = [_user_key(e) for e in examples]
        split_seed = config.seed if config.holdout_seed is None else config.holdout_seed
        side = split_ids(sorted(set(groups)), config.holdout_fraction, split_seed)
        train = [e for e, g in zip(examples, groups) if side[g] == "train"]
        held = [e for e, g in zip(examples, groups) if side[g] == "test"]
    else:
        train, held = list(examples), []
    if config.limit is not None and config.limit < len(train):
        keep = np.sort(np.random.default_rng([config.seed, 7]).choice(len(train), config.limit, replace=False))
        train = [train[i] for i in keep]
    return train, held


def _user_key(example: ChatExample) -> str:
    return json.dumps([m["content"] for m in example.messages if m["role"] == "user"])


@dataclass
class TrainResult:
    adapter_dir: Path
    checkpoints: list[Path]
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int = 0
    grad_norms: list[float] = field(default_factory=list)  # total gradient norm of each step, before clipping


def checkpoint_steps(steps_per_epoch: int, epochs: int, k: int) -> list[int]:
    """The EM-trajectory checkpoint schedule: k evenly spaced in epoch 1, then each epoch's end."""
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
    steps = sorted((out_dir / "checkpoints").glob("step-*"))
    legacy = [p for p in steps if (p / LEGACY_STATE).exists()]
    if legacy:
        raise BadInput(f"{legacy[-1]} holds a pickled {LEGACY_STATE} (emlab <= 0.2); emlab never unpickles "
                       f"training state (it could run code): train into a new folder")
    done = [p for p in steps if (p / STATE_JSON).exists() and (p / STATE_TENSORS).exists()]
    return done[-1] if done else None


def train_lora(
    model: ModelLike,
    examples: list[ChatExample],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `examples`, resuming from `out_dir` if it holds checkpoints.

    `examples` are first split by `split_training` (held-out share, `limit` subsample);
    the split is written to `out_dir/data_split.json`. `model` is left unchanged (training
    happens on a PEFT wrapper whose LoRA weights are removed at the end).
    `on_step(step, total, loss)` reports progress.
    """
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not examples:
        raise BadInput("empty training set")
    if not any(ex.has_response for ex in examples):
        raise BadInput("training examples need an assistant turn (loss is on assistant tokens)")
    lora = config.lora_config(model.n_layers)  # bad layers / targets fail before any work
    examples, held_out = split_training(examples, config)
    if not examples:
        raise BadInput("empty training set after holding out examples")
    prompts = render(examples, model.tokenizer, config.system_prompt, max_tokens=config.max_length, truncate=True)
    pad = model.tokenizer.pad_token_id
    per_update = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(examples) / per_update)
    planned = steps_per_epoch * config.epochs
    total = planned if config.max_steps is None else min(planned, config.max_steps)
    schedule = [s for s in checkpoint_steps(steps_per_epoch, config.epochs, config.checkpoints_first_epoch) if s <= total]
    if total not in schedule:
        schedule.append(total)

    latest = _latest_checkpoint(out_dir)  # every refusal happens before the model is wrapped
    state = load_trainer_state(latest) if latest is not None else None
    if state is not None and _resumable(state["config"]) != _resumable(json.loads(json.dumps(asdict(config)))):
        raise BadInput(f"{out_dir} holds checkpoints of a different training config; use a new folder")

    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model.hf, lora)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    step, losses, norms, resumed_from = 0, [], [], 0
    if state is not None:
        set_peft_model_state_dict(peft_model, load_file(str(latest / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, losses, norms, resumed_from = state["step"], state["losses"], state["grad_norms"], state["step"]
    write_json_atomic(out_dir / "data_split.json", {
        "n_train": len(examples), "n_held_out": len(held_out), "limit": config.limit,
        "holdout_fraction": config.holdout_fraction, "seed": config.seed, "holdout_seed": config.holdout_seed,
        "train_ids": [e.id for e in examples], "held_out_ids": [e.id for e in held_out]})

    checkpoints = [out_dir / "checkpoints" / f"step-{s:06d}" for s in schedule if s <= step]
    device = model.device
    try:
        while step < total:
            epoch, within = divmod(step, steps_per_epoch)
            batches = _batches(len(examples), config.batch_size, config.seed, epoch)
            micro = batches[within * config.grad_accum : (within + 1) * config.grad_accum]
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step, planned)
            optimizer.zero_grad(set_to_none=True)
            n_answer = sum(int((prompts.roles[i] == ROLE_CODE["assistant"]).sum()) for b in micro for i in b)
            step_loss = 0.0
            for idx in micro:
                input_ids, mask, labels = (t.to(device) for t in _collate(prompts.tokens, prompts.roles, idx, pad))
                with training_kernels(device):
                    loss_sum = _answer_loss_sum(peft_model, input_ids, mask, labels)
                    (loss_sum / max(n_answer, 1)).backward()
                step_loss += loss_sum.item() / max(n_answer, 1)
            norm = grad_norm(params, config.max_grad_norm)
            if not (math.isfinite(step_loss) and math.isfinite(norm)):
                # stop before the optimizer applies non-finite gradients: every saved checkpoint stays good
                _diverged(peft_model, optimizer, model, prompts, micro, pad, out_dir, step, total, step_loss, norm,
                          checkpoints)
            optimizer.step()
            step += 1
            losses.append(step_loss)
            norms.append(norm)
            if on_step:
                on_step(step, total, step_loss)
            if step in schedule:
                checkpoints.append(_save_checkpoint(peft_model, optimizer, model, config, out_dir, step, losses, norms))
        final = out_dir / "adapter"
        with atomic_dir(final) as tmp:
            for f in checkpoints[-1].iterdir():
                if f.name not in (STATE_JSON, STATE_TENSORS):
                    shutil.copy2(f, tmp / f.name)
    finally:
        peft_model.unload()  # restore the base model's own modules, weights untouched
        model.hf.eval()
    return TrainResult(final, checkpoints, losses, step, resumed_from, norms)


def _diverged(peft_model, optimizer, model: ModelLike, prompts, micro, pad: int, out_dir: Path, step: int, total: int,
              loss: float, norm: float, checkpoints: list[Path]) -> None:
    """Replay the failed step's micro-batches to find the first non-finite module, record it in
    `<out>/divergence.json` and raise `TrainingDiverged` naming the step, dtype, place and last checkpoint."""
    where, examples, width = NonFinite(False), [], 0
    for idx in micro:
        optimizer.zero_grad(set_to_none=True)
        input_ids, mask, labels = (t.to(model.device) for t in _collate(prompts.tokens, prompts.roles, idx, pad))
        with training_kernels(model.device):  # the same kernels as the failed step
            where = locate_nonfinite(peft_model, lambda: _answer_loss_sum(peft_model, input_ids, mask, labels), mask)
        if where.found:
            examples = [prompts.ids[int(idx[r])] for r in where.rows]  # batch rows -> training examples
            width = int(input_ids.shape[1])  # attention kernels can fail at some widths only
            break
    optimizer.zero_grad(set_to_none=True)
    last = checkpoints[-1].name if checkpoints else "none yet"
    what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm} (loss {loss:.4f})"
    write_json_atomic(out_dir / "divergence.json", {
        "step": step + 1, "loss": loss if math.isfinite(loss) else str(loss),
        "grad_norm": norm if math.isfinite(norm) else str(norm), "dtype": str(getattr(model, "dtype", "?")),
        "last_checkpoint": last, "where": where.to_json(),
        "example_ids": examples, "batch_width": width})
    raise TrainingDiverged(
        f"training diverged at step {step + 1}/{total}: {what} with {getattr(model, 'dtype', '?')} weights "
        f"(last good checkpoint: {last}); {where.line()}; see {out_dir / 'divergence.json'}")


# cuDNN's fused attention backward (PyTorch's default SDPA backend on H100/H200 for bf16/fp16) returns
# NaN in grad_q when an explicit attention mask is passed, the key length is 64 mod 128 and a query
# row's log-sum-exp is below -ln(FLT_MAX) ~ -88.7 (the padded half of its last 128-wide key tile is
# scored 0, not -inf, and exp(0 - lse) overflows): pytorch/pytorch#196678. Padded training batches always
# pass a mask and are as wide as their longest example, and real Qwen2.5 weights make such rows
# (tests/test_bf16_attention.py). Measured on an H100 (torch 2.11, cuDNN 9.19) with real Qwen2.5-Coder-0.5B:
# the `mo` medical run's first 192-wide batch (step 26) gave 5.9M non-finite gradient values from layer 8's
# q_proj with cuDNN allowed, 0 with it excluded (scripts/device/bf16_training.py). The forward is
# unaffected. Training excludes that backend; flash and memory-efficient attention compute the same attention.
EXCLUDE_CUDNN_ATTENTION = True


def training_kernels(device: torch.device):
    """The attention kernels a training step may use: every SDPA backend but cuDNN's on CUDA (see above)."""
    import contextlib

    if device.type != "cuda" or not EXCLUDE_CUDNN_ATTENTION:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# causal LMs whose logits are exactly lm_head(final hidden state), no soft-capping or scaling
_PLAIN_HEAD = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def _answer_loss_sum(peft_model, input_ids, mask, labels) -> torch.Tensor:
    """Summed next-token cross-entropy at the labelled (assistant) positions.

    Where the model's head is plain and on one device, the vocabulary projection runs on those
    positions only: prompt positions' logits are never used (~15% of a SmolLM2 step on CPU; the
    loss is the same sum)."""
    target = labels[:, 1:]
    hf = peft_model.get_base_model()
    if type(hf).__name__ in _PLAIN_HEAD and len(set((getattr(hf, "hf_device_map", None) or {}).values())) <= 1:
        hidden = hf.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1]
        keep = target != -100
        logits, target = hf.get_output_embeddings()(hidden[keep]), target[keep]
    else:
        logits = peft_model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    return torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")


def _save_checkpoint(peft_model, optimizer, model: ModelLike, config: TrainConfig,
                     out_dir: Path, step: int, losses: list[float], grad_norms: list[float]) -> Path:
    final = out_dir / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        peft_model.save_pretrained(str(tmp))
        write_json_atomic(tmp / ADAPTER_META, {
            "base_fingerprint": model.info["base_fingerprint"],
            "base_model": model.name,
            "step": step,
            "config": asdict(config),
            "losses": losses,
            "grad_norms": grad_norms,
        })
        save_trainer_state(tmp, step, losses, optimizer.state_dict(), torch.get_rng_state(), asdict(config),
                           grad_norms)
    return final


def _resumable(config: dict) -> dict:
    """The config fields that must match to continue a run (max_steps may grow). A field added to
    `TrainConfig` after a checkpoint was written counts as its default there."""
    from dataclasses import fields

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name not in config}
    return {k: v for k, v in {**json.loads(json.dumps(defaults)), **config}.items() if k != "max_steps"}


def adapter_meta(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_META
    return json.loads(path.read_text()) if path.exists() else {}
