"""Pieces every experiment script shares: model handles, cached contrasts, organisms, the judge,
console summaries. Experiments import this module, never each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lab  # noqa: F401  (environment before torch)
import numpy as np

from lab.cache import ANALYSIS_STORAGE, StorageDtype
from lab.core.config import DEFAULT_CACHE_DIR, DEFAULT_OUT, Config
from lab.core.console import console, fmt_ci, progress
from lab.directions.contrasts import CONTRASTS, contrast_examples, ensure_cache
from lab.core.errors import BadInput
from lab.models import DEFAULT_MODEL, LabModel, ModelPool

# Defaults every verb shares, named once (a config field's default refers to these).
Device = str  # cpu, cuda, cuda:N or auto: checked when the model is placed (one line if the GPU is missing)
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]


def prog_of(module: str) -> str:
    """The program name a verb's --help shows, the same however it is started (`emlab X`, `python -m`)."""
    import sys

    from experiments import VERBS

    spec = getattr(sys.modules.get(module), "__spec__", None)
    module = spec.name if module == "__main__" and spec is not None else module  # python -m experiments.X

    verb = next((v for v, (m, _) in VERBS.items() if m == module), module.rsplit(".", 1)[-1])
    return f"emlab {verb}"


@dataclass
class Common(Config):
    """Options shared by the analysis experiments."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    adapters: list[str] = field(default_factory=list, metadata={
        "help": "PEFT adapter folder(s) merged in order into the model analysed (verbs that take their models "
                "from --organisms or --run refuse it)"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "activation cache folder"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "output folder (tables, figures, directions)"})
    device: Device = field(default="cpu", metadata={"help": "where the model runs: cpu, cuda, cuda:N or auto"})
    dtype: ModelDtype = field(default="auto", metadata={"help": "compute dtype (auto: bfloat16 on cuda, float32 on cpu)"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})
    seed: int = field(default=0, metadata={"help": "split and bootstrap seed"})
    test_fraction: float = field(default=0.25, metadata={"help": "held-out share (split by example id)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})
    limit: int = field(default=0, metadata={"help": "use only the first N items per class (0: all)"})
    storage: StorageDtype = field(default=ANALYSIS_STORAGE, metadata={"help": "activation cache storage dtype"})


@dataclass
class SteersDirections:
    """The option of the verbs that apply directions to a model (steer, ablate); a verb that applies
    none does not offer it, rather than ignore it."""

    allow_foreign_direction: bool = field(default=False, metadata={
        "help": "apply a direction to a model it was not fitted for (other base weights, d_model or depth)"})


def handle_for(cfg: Common, adapters: list[str] | None = None, pool: ModelPool | None = None) -> LabModel:
    """The model of an experiment's config (with `adapters` instead of `cfg.adapters` if given).

    Weights load on first use, into `pool` or the pool the caller opened (`cli` opens one per
    command; the study one per run), so every handle of one base shares one copy.
    """
    return LabModel(cfg.model, cfg.adapters if adapters is None else adapters, dtype=cfg.dtype,
                    device=cfg.device, device_map=cfg.device_map, pool=pool)


def no_adapters(cfg: Common, models_from: str) -> None:
    """Refuse `--adapters` in a verb whose models come from its own flags, rather than ignore it."""
    if cfg.adapters:
        raise BadInput(f"--adapters is not used here: the models come from {models_from}")


def parse_organisms(pairs: list[str]) -> dict[str, list[str]]:
    """`NAME=ADAPTER_DIR` command-line pairs -> {name: [adapter]}."""
    models = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadInput(f"organism {pair!r} must be NAME=ADAPTER_DIR")
        name, path = pair.split("=", 1)
        models[name] = [path]
    return models


def best_layers(rows: list[dict], methods: list[str]) -> list[dict]:
    """Each method at its best held-out layer, with the random control at that same layer.

    The random row reports its mean over layers: its maximum over 30 noisy layers would be
    a selection-biased number, not a baseline.
    """
    random = {r["layer"]: r for r in rows if r["method"] == "random"}
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if method == "random":
            aurocs = np.array([r["auroc"] for r in mine])
            out.append({"method": "random", "best layer": "mean of all",
                        "AUROC [95% CI]": f"{aurocs.mean():.3f} (range {aurocs.min():.2f}-{aurocs.max():.2f})"})
            continue
        top = max(mine, key=lambda r: r["auroc"])
        ctrl = random.get(top["layer"])
        out.append({"method": method, "best layer": top["layer"],
                    "AUROC [95% CI]": fmt_ci(top["auroc"], top["auroc_lo"], top["auroc_hi"]),
                    "acc": f"{top['acc']:.3f}", "sep (SD)": f"{top['sep_sd']:.2f}",
                    "random @ layer": f"{ctrl['auroc']:.3f}" if ctrl else "",
                    "n train/test": f"{top['n_train']}/{top['n_test']}"})
    return out


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
        from lab.core.config import parse_config
        from lab.core.console import user_errors

        with user_errors(), ModelPool():  # one copy of the weights for the whole command
            run(parse_config(config_cls, argv, prog=prog_of(run.__module__)))
    return main


def stored_summary(cfg, out: Path) -> dict | None:
    """The summary.json an earlier run of exactly this config wrote into `out`, or None.

    For experiments whose results are not all in content-keyed caches: a rerun of the same config
    returns what is stored and loads no model; any changed setting runs the experiment again.
    """
    import json

    from lab.core.config import config_dict

    path = out / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("config") == json.loads(json.dumps(config_dict(cfg))) else None


def save_summary(cfg, out: Path, **fields) -> dict:
    """Write an experiment's summary.json (its config plus results) and return it."""
    from lab.core.config import config_dict
    from lab.core.io import write_json_atomic

    summary = {"config": config_dict(cfg), **fields, "out": str(out)}
    write_json_atomic(out / "summary.json", summary)
    return summary
