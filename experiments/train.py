"""Train a LoRA model organism from a named recipe; every flag overrides the recipe.

    emlab train --data medical --out runs/medical                     # emlab's default
    emlab train --recipe mo --data ../shared/data/model-organisms/bad_medical_advice.jsonl \
        --out runs/mo-medical --train-limit 800                                              # the paper's recipe
    emlab train --recipe mo-rank1x9 --data financial --out runs/r1x9 --show-config   # print, train nothing

Recipes (`lab.training.lora.RECIPES`): `mo` is the Model Organisms / Betley open-model recipe
(rsLoRA r32 alpha 64 on all seven projections, lr 1e-5 with 5 warm-up steps then linear
decay, effective batch 16, weight decay 0.01, 10% of user turns held out); `mo-rank1` one
rank-1 down_proj adapter at half depth, lr 2e-5; `mo-rank1x9` nine of them. The resolved
config is printed before training and written with every checkpoint. A rerun into the
same `--out` resumes from its last checkpoint; `--train-limit N` trains on a seeded subsample of
N examples (recorded in `data_split.json` and the adapter's metadata).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional  # not `X | None`: lab.core.config reads typing.Union

import lab  # noqa: F401  (environment before torch)
from experiments.common import cli
from lab.models.options import Device, ModelDtype
from lab.core.config import Config, OldFlag
from lab.core.console import console, progress, table
from lab.data.formats import load_examples
from lab.core.errors import BadInput
from lab.models import DEFAULT_MODEL, load_model
from lab.training.lora import RECIPES, TrainConfig, recipe_config, train_lora


@dataclass
class TrainCli(Config):
    """A LoRA organism (adapter folder + checkpoints) trained from a recipe; every flag overrides it."""

    OLD_FLAGS = {"--show": OldFlag("--show-config"), "--limit": OldFlag("--train-limit"),
                 "--layers": OldFlag("--lora-layers")}

    data: str = field(default="", metadata={"help": "chat JSONL path or shipped set (medical, financial, ...)"})
    out: str = field(default="", metadata={"help": "output folder (resumes if it holds checkpoints)"})
    recipe: str = field(default="default", metadata={"help": f"default, {', '.join(RECIPES)}"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    device: Device = field(default="cpu", metadata={"help": "where the model runs: cpu, cuda, cuda:N or auto"})
    dtype: ModelDtype = field(default="auto", metadata={"help": "compute dtype (auto: bfloat16 on cuda, float32 on cpu)"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})
    show_config: bool = field(default=False, metadata={"help": "print the resolved config and exit"})
    # every field below defaults to None = "the recipe's value"
    train_limit: Optional[int] = field(default=None, metadata={"help": "train on a seeded subsample of N examples"})
    holdout_fraction: Optional[float] = field(default=None, metadata={"help": "share of user turns never trained on"})
    r: Optional[int] = field(default=None, metadata={"help": "LoRA rank"})
    alpha: Optional[int] = field(default=None, metadata={"help": "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with rsLoRA)"})
    dropout: Optional[float] = field(default=None, metadata={"help": "LoRA dropout"})
    targets: list[str] = field(default_factory=list, metadata={"help": "LoRA target modules"})
    rslora: Optional[bool] = field(default=None, metadata={"help": "rank-stabilised LoRA scaling (alpha/sqrt(r))"})
    lora_layers: list[int] = field(default_factory=list, metadata={"help": "adapt only these layers"})
    layers_of: Optional[int] = field(default=None, metadata={
        "help": "--lora-layers are given on a model this deep (scaled)"})
    rank1_layer: Optional[int] = field(default=None, metadata={"help": "a rank-1 adapter on this layer's down_proj only"})
    lr: Optional[float] = field(default=None, metadata={"help": "learning rate"})
    lr_schedule: Optional[Literal["constant", "linear"]] = field(default=None, metadata={
        "help": "constant or linear (decay after warm-up)"})
    warmup_steps: Optional[int] = field(default=None, metadata={"help": "linear warm-up steps"})
    weight_decay: Optional[float] = field(default=None, metadata={"help": "AdamW weight decay"})
    epochs: Optional[int] = field(default=None, metadata={"help": "passes over the training set"})
    batch_size: Optional[int] = field(default=None, metadata={"help": "training batch size (per optimizer micro-step)"})
    grad_accum: Optional[int] = field(default=None, metadata={"help": "gradient accumulation steps"})
    max_length: Optional[int] = field(default=None, metadata={"help": "training tokens per example (longer are cut)"})
    seed: Optional[int] = field(default=None, metadata={"help": "training seed (subsample, split, order, init)"})
    checkpoints: Optional[int] = field(default=None, metadata={"help": "evenly spaced checkpoints in the first epoch"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop training after this many steps"})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "explicit system prompt (recorded)"})


def resolve(cfg: TrainCli) -> TrainConfig:
    """The recipe with the given flags applied."""
    return recipe_config(
        cfg.recipe, limit=cfg.train_limit, holdout_fraction=cfg.holdout_fraction, r=cfg.r, alpha=cfg.alpha,
        dropout=cfg.dropout, target_modules=tuple(cfg.targets) or None, rslora=cfg.rslora,
        layers=tuple(cfg.lora_layers) or None, layers_of=cfg.layers_of, rank1_down_proj_layer=cfg.rank1_layer, lr=cfg.lr,
        lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, max_length=cfg.max_length, seed=cfg.seed,
        checkpoints_first_epoch=cfg.checkpoints, max_steps=cfg.max_steps, system_prompt=cfg.system_prompt)


def show(name: str, config: TrainConfig, n_layers: Optional[int] = None) -> None:
    rows = [{"field": k, "value": str(v)} for k, v in asdict(config).items()]
    if n_layers is not None:
        rows.append({"field": "adapted layers (this model)", "value": str(config.adapted_layers(n_layers) or "all")})
    console.print(table(f"recipe {name}", rows))


def run(cfg: TrainCli) -> None:
    config = resolve(cfg)
    if cfg.show_config:
        show(cfg.recipe, config)
        return
    if not cfg.data or not cfg.out:
        raise BadInput("--data and --out are required")
    examples = load_examples(cfg.data)
    lab_model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
    config.lora_config(lab_model.n_layers)  # a layer the model lacks fails before anything is written
    show(cfg.recipe, config, lab_model.n_layers)
    console.print(f"training on {cfg.data} ({len(examples)} examples"
                  f"{f', subsample {config.limit}' if config.limit else ''}) -> {cfg.out}")
    with progress() as bar:
        task = bar.add_task("train", total=None, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.3f}")

        result = train_lora(lab_model, examples, cfg.out, config, on_step=on_step)
    if result.resumed_from:
        console.print(f"resumed from step {result.resumed_from}")
    console.print(f"[green]adapter[/] {result.adapter_dir} ({result.steps} steps; checkpoints: "
                  f"{', '.join(p.name for p in result.checkpoints)})")


main = cli(TrainCli, run)

if __name__ == "__main__":
    main()
