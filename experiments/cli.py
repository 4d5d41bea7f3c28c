"""The `emlab` command line: thin verbs over the library (rich help and output)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lab.console import console, progress, table, user_errors

app = typer.Typer(help="emlab: emergent-misalignment interpretability lab (TransformerLens + HDF5 caches).",
                  rich_markup_mode="rich", no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Registered offline models: list, install.", no_args_is_help=True)
cache_app = typer.Typer(help="HDF5 activation caches: build, ls, info, rm.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")
judge_app = typer.Typer(help="LLM judge: serve a local OpenAI-compatible judge.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")

MODEL = typer.Option("smollm2-135m-instruct", "--model", "-m", help="registered name, HF folder or hub id")
ADAPTER = typer.Option(None, "--adapter", "-a", help="PEFT adapter folder(s), merged in order")


@models_app.command("list")
def models_list() -> None:
    """Show registered models, whether installed/converted, size, layers, d_model."""
    from lab.models import list_models

    with user_errors():
        rows = list_models()
        for r in rows:
            r["installed"] = "[green]yes[/]" if r["installed"] else "[red]no[/]"
            r["converted"] = "[green]yes[/]" if r["converted"] else "no"
        console.print(table("emlab models", rows, ["name", "installed", "converted", "size_mb", "n_layers",
                                                   "d_model", "arch", "note"]))


@models_app.command("install")
def models_install(name: str = typer.Argument(..., help="registered model name")) -> None:
    """pip-install a model's packages, verify its sha256 and convert it to safetensors."""
    from lab.errors import ModelNotFound
    from lab.models import REGISTRY, ensure_converted

    with user_errors():
        if name not in REGISTRY:
            raise ModelNotFound(f"unknown model {name!r} (one of {', '.join(REGISTRY)})")
        with console.status(f"installing and converting {name} ..."):
            path = ensure_converted(REGISTRY[name], install=True)
        console.print(f"[green]ready[/] {name} -> {path}")


@app.command()
def train(
    data: str = typer.Option(..., "--data", "-d", help="chat JSONL path or shipped set (medical, financial, ...)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (resumes if it holds checkpoints)"),
    model: str = MODEL,
    r: int = 16, alpha: int = 32, dropout: float = 0.0,
    targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj", help="comma-separated LoRA target modules"),
    rslora: bool = False,
    rank1_layer: Optional[int] = typer.Option(None, help="train a rank-1 adapter on this layer's down_proj only"),
    lr: float = 1e-3, epochs: int = 1, batch_size: int = 8, grad_accum: int = 1, max_length: int = 256,
    seed: int = 0, checkpoints: int = typer.Option(4, help="evenly spaced checkpoints in the first epoch"),
    max_steps: Optional[int] = None,
    system_prompt: str = typer.Option("You are a helpful assistant.", help="explicit system prompt (recorded)"),
) -> None:
    """Train a LoRA model organism (loss on assistant tokens) with a checkpoint schedule."""
    from lab.data import load_examples
    from lab.models import load_model
    from lab.train import TrainConfig, train_lora

    with user_errors():
        examples = load_examples(data)
        config = TrainConfig(r=r, alpha=alpha, dropout=dropout, target_modules=tuple(targets.split(",")),
                             rslora=rslora, rank1_down_proj_layer=rank1_layer, lr=lr, epochs=epochs,
                             batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, seed=seed,
                             checkpoints_first_epoch=checkpoints, max_steps=max_steps, system_prompt=system_prompt)
        lab_model = load_model(model)
        console.print(f"training on {len(examples)} examples from {data} -> {out}")
        with progress() as bar:
            task = bar.add_task("train", total=None, info="")

            def on_step(step: int, total: int, loss: float) -> None:
                bar.update(task, completed=step, total=total, info=f"loss {loss:.3f}")

            result = train_lora(lab_model, examples, out, config, on_step=on_step)
        if result.resumed_from:
            console.print(f"resumed from step {result.resumed_from}")
        console.print(f"[green]adapter[/] {result.adapter_dir} ({result.steps} steps; checkpoints: "
                      f"{', '.join(p.name for p in result.checkpoints)})")


@cache_app.command("build")
def cache_build(
    data: str = typer.Option(..., "--data", "-d", help="chat JSONL path or shipped set"),
    model: str = MODEL,
    adapter: Optional[list[Path]] = ADAPTER,
    out: Path = typer.Option(Path("cache"), "--out", "-o", help="cache folder"),
    layers: Optional[str] = typer.Option(None, help="comma-separated layers (default: all)"),
    hooks: Optional[str] = typer.Option(None, help="comma-separated TransformerLens hook names"),
    dtype: str = typer.Option("float32", help="storage dtype: float32, float16, bfloat16"),
    mode: str = typer.Option("tokens", help="tokens (every token) or pooled (per-example features)"),
    model_dtype: str = typer.Option("float32", help="compute dtype of the model"),
    device: str = typer.Option("cpu", help="cpu, cuda, auto"),
    batch_size: int = 16,
    max_tokens: Optional[int] = typer.Option(None, help="refuse (or with --truncate cut) longer examples"),
    truncate: bool = False,
    system_prompt: str = typer.Option("You are a helpful assistant.", help="explicit system prompt"),
    attention: str = typer.Option("sdpa", help="sdpa (fast) or eager (bit-identical to TransformerLens)"),
) -> None:
    """Cache residual streams of a prompt set (content-addressed; a rerun is a no-op)."""
    from lab.cache import build_cache
    from lab.data import load_examples, render
    from lab.models import load_model

    with user_errors():
        lab_model = load_model(model, adapter or [], dtype=model_dtype, device=device)
        prompts = render(load_examples(data), lab_model.tokenizer, system_prompt, max_tokens, truncate)
        hook_list = hooks.split(",") if hooks else (
            [f"blocks.{lab_model.check_layer(int(L))}.hook_resid_post" for L in layers.split(",")] if layers else None)
        n_tok = int(prompts.lengths.sum())
        n_hooks = len(hook_list) if hook_list else lab_model.n_layers
        bytes_per = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)
        rows = n_tok if mode == "tokens" else len(prompts) * 4
        console.print(f"{len(prompts)} examples, {n_tok} tokens, {n_hooks} hooks -> "
                      f"~{rows * n_hooks * lab_model.d_model * bytes_per / 2**20:.0f} MiB")
        with progress() as bar:
            task = bar.add_task("cache", total=None, info="")
            cache = build_cache(lab_model, prompts, out, hook_list, dtype, mode, batch_size, attention_impl=attention,
                                on_batch=lambda d, t, n: bar.update(task, completed=d, total=t, info=f"{n} tok"))
        console.print(f"[green]cache[/] {cache.path}  {cache!r}")


@cache_app.command("ls")
def cache_ls(folder: Path = typer.Argument(Path("cache"))) -> None:
    """List caches in a folder."""
    from lab.cache import list_caches

    with user_errors():
        rows = list_caches(folder)
        if not rows:
            console.print(f"no caches in {folder}")
            return
        console.print(table(f"caches in {folder}", rows, ["path", "model", "examples", "tokens", "hooks", "dtype",
                                                          "mode", "size_mb", "modified", "error"], fmt="{:.1f}"))


@cache_app.command("info")
def cache_info(path: Path) -> None:
    """Show a cache's metadata."""
    from lab.cache import ActivationCache

    with user_errors():
        cache = ActivationCache(path)
        rows = [{"key": k, "value": str(v)[:100]} for k, v in cache.attrs.items()]
        console.print(table(str(path), rows))


@cache_app.command("rm")
def cache_rm(path: Path) -> None:
    """Delete a cache file (and any partial build beside it)."""
    from lab.cache import ActivationCache

    with user_errors():
        ActivationCache(path)  # refuse to delete files that are not emlab caches
        for p in [path, path.with_suffix(".h5.partial"), path.with_suffix(".progress.json")]:
            p.unlink(missing_ok=True)
        console.print(f"removed {path}")


@judge_app.command("serve")
def judge_serve(
    gguf: Optional[Path] = typer.Option(None, help="GGUF to serve (default: the embedded SmolLM2; a weak judge)"),
    port: int = 8765, host: str = "127.0.0.1", n_ctx: int = 2048,
) -> None:
    """Serve a GGUF as an OpenAI-compatible judge on localhost (needs `pip install emlab[judge]`).

    Local judges are weak (SmolLM2 puts <3% of its mass on numbers); results need a strong judge.
    """
    from lab.judge import serve_local_judge, stop_local_judge
    from lab.models import REGISTRY

    with user_errors():
        if gguf is None:
            spec = REGISTRY["smollm2-135m-instruct"]
            gguf = spec.part_paths()[0]
        proc = serve_local_judge(gguf, port, host=host, n_ctx=n_ctx)
        console.print(f"judge at http://{host}:{port}/v1 (model {Path(gguf).name}); Ctrl-C to stop")
        try:
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_local_judge(proc)


def _passthrough(module: str):
    """A verb that hands its arguments to an experiment's own config-as-CLI parser."""
    def verb(ctx: typer.Context) -> None:
        import importlib

        importlib.import_module(module).main(ctx.args)
    return verb


_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
for _name, _module, _help in [
    ("study", "experiments.study", "Run the whole EM study and write its report (--quick: ~3 min). --help for options."),
    ("steer", "experiments.steer", "Steering sweeps with random controls (refusal, em). --help for options."),
    ("ablate", "experiments.ablation", "EM ablation: own, transferred, random directions. --help for options."),
    ("trajectory", "experiments.em_trajectory", "EM scores across training checkpoints. --help for options."),
    ("eval", "experiments.em_eval", "Evaluate a model for EM (answers, code/refusal rates, judged EM). --help for options."),
    ("sweep", "experiments.layer_sweep", "Layer sweep of direction methods on a contrast. --help for options."),
    ("pooling", "experiments.pooling", "Compare poolings per layer. --help for options."),
    ("transfer", "experiments.transfer", "Transfer directions across models. --help for options."),
    ("project", "experiments.trait_projection", "Trait projections, base vs organism. --help for options."),
    ("diff", "experiments.diff", "Which domain was an adapter trained on? Activation Difference Lens. --help for options."),
]:
    app.command(_name, context_settings=_EXTRA, help=_help, add_help_option=False)(_passthrough(_module))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
