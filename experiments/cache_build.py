"""`emlab cache build`: cache the residual streams of a prompt set (content-addressed; a rerun is a no-op).

    python -m experiments.cache_build --data refusal --layers 3 9 15 --storage float16
    emlab cache build --data medical --adapters runs/medical/adapter

Several builds of one cache at once are safe: the second waits for the first and reuses its file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from experiments.common import cli
from lab.cache import DEFAULT_STORAGE, STORAGE_DTYPES, AttentionImpl, CacheMode, StorageDtype, build_cache
from lab.core.config import DEFAULT_CACHE_DIR, Config, OldFlag
from lab.models.options import Device, ModelDtype
from lab.core.console import console, progress
from lab.data.formats import DEFAULT_SYSTEM_PROMPT, load_examples, render
from lab.models import DEFAULT_MODEL, load_model


@dataclass
class CacheBuildConfig(Config):
    """An HDF5 residual-stream cache of a prompt set (content-addressed; a rerun is a no-op)."""

    # `--dtype` was the storage dtype here and the compute dtype everywhere else: now it is the
    # compute dtype here too. Beside the old `--model-dtype`, an old `--dtype` is still read as storage.
    OLD_FLAGS = {"--model-dtype": OldFlag("--dtype"), "--dtype": OldFlag("--storage", only_with="--model-dtype"),
                 "--out": OldFlag("--cache-dir"), "--batch-size": OldFlag("--forward-batch-size")}
    MEANING_MOVED = {"--dtype": ("`--dtype` is the compute dtype in `cache build` too now (the storage dtype is "
                                 "`--storage`)", "--storage")}

    data: str = field(metadata={"help": "chat JSONL path or shipped set (medical, refusal, ...)"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "registered model, HF folder or hub id"})
    adapters: list[str] = field(default_factory=list, metadata={"help": "PEFT adapter folder(s) merged in order"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "activation cache folder"})
    layers: list[int] = field(default_factory=list, metadata={"help": "layers to cache (default: all)"})
    hooks: list[str] = field(default_factory=list, metadata={"help": "TransformerLens hook names (instead of --layers)"})
    storage: StorageDtype = field(default=DEFAULT_STORAGE, metadata={"help": "activation cache storage dtype"})
    mode: CacheMode = field(default="tokens", metadata={"help": "tokens (every token) or pooled (per-example features)"})
    dtype: ModelDtype = field(default="auto", metadata={"help": "compute dtype (auto: bfloat16 on cuda, float32 on cpu)"})
    device: Device = field(default="cpu", metadata={"help": "where the model runs: cpu, cuda, cuda:N or auto"})
    device_map: str = field(default="", metadata={"help": "spread the model over GPUs: auto or cuda:0,cuda:1"})
    forward_batch_size: int = field(default=16, metadata={"help": "examples per forward"})
    max_tokens: int = field(default=0, metadata={"help": "refuse (or with --truncate cut) longer examples (0: no limit)"})
    truncate: bool = field(default=False, metadata={"help": "cut examples longer than --max-tokens"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "explicit system prompt"})
    attention: AttentionImpl = field(default="sdpa", metadata={
        "help": "sdpa (fast) or eager (TransformerLens's attention: bit-identical to its run_with_cache at batch size 1)"})


def run(cfg: CacheBuildConfig):
    examples = load_examples(cfg.data)  # before the model: a bad file fails in a second
    model = load_model(cfg.model, cfg.adapters, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
    prompts = render(examples, model.tokenizer, cfg.system_prompt, cfg.max_tokens or None, cfg.truncate)
    hooks = cfg.hooks or [f"blocks.{model.check_layer(L)}.hook_resid_post" for L in cfg.layers] or None
    n_tok = int(prompts.lengths.sum())
    n_hooks = len(hooks) if hooks else model.n_layers
    rows = n_tok if cfg.mode == "tokens" else len(prompts) * 4
    console.print(f"{len(prompts)} examples, {n_tok} tokens, {n_hooks} hooks -> "
                  f"~{rows * n_hooks * model.d_model * np.dtype(STORAGE_DTYPES[cfg.storage]).itemsize / 2**20:.0f} MiB")
    with progress() as bar:
        task = bar.add_task("cache", total=None, info="")
        cache = build_cache(model, prompts, cfg.cache_dir, hooks, cfg.storage, cfg.mode, cfg.forward_batch_size,
                            attention_impl=cfg.attention,
                            on_batch=lambda d, t, n: bar.update(task, completed=d, total=t, info=f"{n} tok"))
    console.print(f"[green]cache[/] {cache.path}  {cache!r}")
    return cache


main = cli(CacheBuildConfig, run)


if __name__ == "__main__":
    main()
