"""Pieces every experiment script shares: model handles, cached contrasts, console summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lab  # noqa: F401  (environment before torch)
from lab.console import console, progress
from lab.contrasts import CONTRASTS, contrast_examples, ensure_cache
from lab.models import DEFAULT_MODEL, LabModel, ModelPool


@dataclass
class Common:
    """Options shared by the analysis experiments."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    adapters: list[str] = field(default_factory=list, metadata={"help": "PEFT adapter folder(s) merged in order"})
    cache_dir: str = field(default="cache", metadata={"help": "activation cache folder"})
    out: str = field(default="figures", metadata={"help": "output folder (tables, figures, directions)"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or auto"})
    dtype: str = field(default="auto", metadata={"help": "compute dtype: auto (bfloat16 on cuda, float32 on cpu), "
                                                        "float32, bfloat16, float16"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})
    seed: int = field(default=0, metadata={"help": "split and bootstrap seed"})
    test_fraction: float = field(default=0.25, metadata={"help": "held-out share (split by example id)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})
    limit: int = field(default=0, metadata={"help": "use only the first N items per class (0: all)"})
    storage: str = field(default="float16", metadata={"help": "activation cache storage dtype"})


def handle_for(cfg: Common, adapters: list[str] | None = None, pool: ModelPool | None = None) -> LabModel:
    """The model of an experiment's config (with `adapters` instead of `cfg.adapters` if given).

    Weights load on first use, into `pool` or the pool the caller opened (`cli` opens one per
    command; the study one per run), so every handle of one base shares one copy.
    """
    return LabModel(cfg.model, cfg.adapters if adapters is None else adapters, dtype=cfg.dtype,
                    device=cfg.device, device_map=cfg.device_map, pool=pool)


def contrast_cache(handle: LabModel, contrast: str, cfg: Common, label: str = "", keep=None):
    """The (cached) activations of a named contrast on one model, with a progress bar if built.

    `keep(example) -> bool` drops examples (e.g. the held-out questions a score is measured on).
    """
    examples = [e for e in contrast_examples(contrast, cfg.limit or None) if keep is None or keep(e)]
    with progress() as bar:
        task = bar.add_task(f"cache {contrast} {label}".strip(), total=None, info="")
        cache = ensure_cache(handle, examples, cfg.cache_dir, storage_dtype=cfg.storage,
                             on_batch=lambda d, t, n: bar.update(task, completed=d, total=t, info=f"{n} tok"))
        bar.update(task, completed=1, total=1) if bar.tasks[task].total is None else None
    return cache, CONTRASTS[contrast]


def out_dir(cfg: Common, name: str) -> Path:
    path = Path(cfg.out) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def say(message: str) -> None:
    console.print(message)


def cli(config_cls, run):
    """An experiment's `main(argv)`: parse its config dataclass, run, print user errors as one line."""
    def main(argv=None) -> None:
        from lab.config import parse_config
        from lab.console import user_errors

        with user_errors(), ModelPool():  # one copy of the weights for the whole command
            run(parse_config(config_cls, argv))
    return main


def save_summary(cfg, out: Path, **fields) -> dict:
    """Write an experiment's summary.json (its config plus results) and return it."""
    from lab.config import config_dict
    from lab.io import write_json_atomic

    summary = {"config": config_dict(cfg), **fields, "out": str(out)}
    write_json_atomic(out / "summary.json", summary)
    return summary
