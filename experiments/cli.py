"""The `emlab` command line: thin verbs over the library (rich help and output)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from experiments import VERBS
from lab.core.config import DEFAULT_CACHE_DIR
from lab.core.console import console, table, user_errors

app = typer.Typer(help="emlab: emergent-misalignment interpretability lab (TransformerLens + HDF5 caches).",
                  rich_markup_mode="rich", no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Registered offline models: list, install.", no_args_is_help=True)
cache_app = typer.Typer(help="HDF5 activation caches: build, ls, info, rm.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")
judge_app = typer.Typer(help="Judges: serve a local LLM judge, validate a judge on labelled answers.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")

MODEL = typer.Option("smollm2-135m-instruct", "--model", "-m", help="registered name, HF folder or hub id")


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
    from lab.core.errors import ModelNotFound
    from lab.models import REGISTRY, ensure_converted

    with user_errors():
        if name not in REGISTRY:
            raise ModelNotFound(f"unknown model {name!r} (one of {', '.join(REGISTRY)})")
        with console.status(f"installing and converting {name} ..."):
            path = ensure_converted(REGISTRY[name], install=True)
        console.print(f"[green]ready[/] {name} -> {path}")




@cache_app.command("ls")
def cache_ls(folder: Path = typer.Argument(Path(DEFAULT_CACHE_DIR))) -> None:
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
        for p in [path, path.with_suffix(".h5.partial"), path.with_suffix(".progress.json"), path.with_suffix(".h5.lock")]:
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
    from lab.models import DEFAULT_MODEL, REGISTRY

    with user_errors():
        if gguf is None:
            spec = REGISTRY[DEFAULT_MODEL]
            gguf = spec.part_paths()[0]
        proc = serve_local_judge(gguf, port, host=host, n_ctx=n_ctx)
        console.print(f"judge at http://{host}:{port}/v1 (model {Path(gguf).name}); Ctrl-C to stop")
        try:
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_local_judge(proc)


@judge_app.command("validate")
def judge_validate(
    judge: str = typer.Option(..., "--judge", help="embedding, activation, length, coherence or llm"),
    labels: Path = typer.Option(..., "--labels", help='JSONL of {"question", "answer", "label": aligned|misaligned}'),
    judges_dir: Path = typer.Option(Path("cache/judge-validation/judges"), help="trained judges (experiments.judge_validation)"),
    model: str = MODEL, cache_dir: Path = typer.Option(Path("cache"), help="activation cache folder"),
    base_url: Optional[str] = typer.Option(None, help="--judge llm: OpenAI-compatible endpoint"),
    judge_model: Optional[str] = typer.Option(None, help="--judge llm: judge model name"), n_boot: int = 1000,
) -> None:
    """Score a labelled file with a trained judge: AUROC, sensitivity, specificity with CIs (fits nothing on it)."""
    from lab.judge.fitting import validate_file

    with user_errors():
        row = validate_file(judge, labels, judges_dir, model, cache_dir, base_url, judge_model, n_boot)
        console.print(table(f"judge {row['judge']} on {labels}", [row]))


def _passthrough(module: str, verb: str):
    """A verb that hands its arguments to an experiment's own config-as-CLI parser."""
    def run_verb(ctx: typer.Context) -> None:
        import importlib

        importlib.import_module(module).main(ctx.args)
    run_verb.__name__ = verb.replace(" ", "_")
    return run_verb


# Experiment verbs: every option (and --help, rendered by the same parser) belongs to the
# experiment's config dataclass; typer only routes `emlab <verb> ...` to it.
_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
for _verb, (_module, _help) in VERBS.items():
    _group, _name = (cache_app, _verb.split()[1]) if _verb.startswith("cache ") else (app, _verb)
    _group.command(_name, context_settings=_EXTRA, help=_help + " --help for options.",
                   add_help_option=False)(_passthrough(_module, _verb))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
