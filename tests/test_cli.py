"""One CLI mechanism: every experiment verb's options are its config dataclass, and its --help is one text
whichever way it is started (`emlab X --help`, `python -m experiments.X --help`)."""

import contextlib
import importlib
import io
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from experiments.verbs import PHASES, RENAMED, VERBS, translate
from experiments.cli import app
from tests.conftest import REPO


def _module_help(module: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_help_is_its_config_parser(verb, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    module = VERBS[verb][0]
    direct = _module_help(module)
    routed = CliRunner().invoke(app, [*verb.split(), "--help"])
    assert routed.exit_code == 0, routed.output
    assert routed.output == direct
    assert direct.startswith(f"usage: emlab {verb} ") and "\noptions:\n  -h, --help" in direct
    assert "(default: [])" not in direct and "(default: )" not in direct


@pytest.mark.parametrize("verb", ["em-rates", "cache build"])
def test_help_alike_as_module_and_as_emlab(verb):
    env = {**os.environ, "COLUMNS": "120"}
    run = lambda *args: subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True, text=True,  # noqa: E731
                                       cwd=REPO, env=env)
    direct, routed = run(VERBS[verb][0]), run("experiments.cli", *verb.split())
    assert direct.returncode == routed.returncode == 0
    assert direct.stdout == routed.stdout and direct.stdout.startswith(f"usage: emlab {verb} ")


def test_literal_fields_are_choices(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert "--storage {float32,float16,bfloat16}" in _module_help("experiments.cache_build")
    assert "--judge-scheme {auto,logprob100,digit10}" in _module_help("experiments.em_rates")
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "steer-refusal", "--select", "nonsense"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "invalid choice: 'nonsense' (choose from 'auroc', 'ablation')" in out.stderr


def test_an_option_prefix_is_refused_not_read_as_another_option(capsys):
    """`--adapter DIR` where a verb has only `--adapters`: argparse's prefix matching would read it as
    `--adapters DIR` (the model analysed) and run; it is an unknown option instead."""
    import dataclasses

    from lab.core.config import Config, parse_config

    @dataclasses.dataclass
    class Planted(Config):
        """A planted config."""

        adapters: list[str] = dataclasses.field(default_factory=list, metadata={"help": "adapters"})

    assert parse_config(Planted, ["--adapters", "a"]).adapters == ["a"]
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Planted, ["--adapter", "a"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --adapter a" in capsys.readouterr().err


def test_configs_built_in_python_check_their_choices():
    from experiments.cache_build import CacheBuildConfig
    from lab.core.errors import BadInput

    with pytest.raises(BadInput, match=r"^--storage must be one of float32, float16, bfloat16, not 'float8'$"):
        CacheBuildConfig(data="refusal", storage="float8")
    assert CacheBuildConfig(data="refusal", storage="bfloat16").storage == "bfloat16"


def _help_description(text: str) -> str:
    """The description argparse prints between the usage and the options, without white space (argparse
    rewraps it, also after a hyphen)."""
    return "".join(text.split("\n\n", 1)[1].split("\noptions:")[0].split())


@pytest.mark.parametrize("verb", list(VERBS))
def test_verb_module_phase_and_help_follow_the_registry(verb, monkeypatch):
    """module == experiments.<verb with _>; a known phase; --help's description starts with the registry's
    one-line help, which is the config docstring's first line (what the verb produces), never a dataclass repr."""
    monkeypatch.setenv("COLUMNS", "120")
    entry = VERBS[verb]
    assert entry.module == "experiments." + verb.replace(" ", "_").replace("-", "_")
    assert entry.phase in PHASES
    assert _help_description(_module_help(entry.module)).startswith("".join(entry.help.split()))
    cfg = getattr(importlib.import_module(entry.module).main, "config", None)
    if cfg is not None:  # routed verbs (checkpoints, em-rates) describe themselves with the registry's line
        assert cfg.__doc__.splitlines()[0] == entry.help
        assert not cfg.__doc__.startswith(cfg.__name__ + "(")


def test_emlab_help_groups_verbs_by_phase(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["--help"]).output
    panels = [line for line in out.splitlines() if line.startswith("╭─ ")]
    assert [p.strip("╭─ ").split(" ─")[0] for p in panels] == ["Options", *PHASES]
    for verb, entry in VERBS.items():  # each verb (or its group) sits in its phase's panel
        name = verb.split()[0]
        panel = out.split(f"╭─ {entry.phase} ")[1].split("╰")[0]
        assert f"│ {name} " in panel, (verb, entry.phase)
    for old in RENAMED:
        assert f"│ {old} " not in out  # old names run but are not listed


def test_translations_of_old_names():
    assert translate("steer", ["--target", "em", "--organism", "a"])[:2] == ("steer-em", ["--organism", "a"])
    assert translate("steer", ["--target=refusal"])[:2] == ("steer-refusal", [])
    assert translate("steer", [])[:2] == ("steer-refusal", [])
    assert translate("monitor", ["--runs", "a=b"])[:2] == ("checkpoints", ["--measure", "shifts", "--runs", "a=b"])
    assert translate("rated-samples", [])[:2] == ("em-rates", ["--source", "ratings"])


@pytest.mark.parametrize("old", list(RENAMED))
def test_every_old_name_runs_its_new_verb_with_one_notice(old):
    """`emlab <old> --help` and `python -m experiments.<old module> --help` print the new verb's help after one
    stderr line naming it; the verb they land on is the one RENAMED names (a wrong mapping fails here)."""
    env = {**os.environ, "COLUMNS": "120"}
    spec = RENAMED[old]
    new, args, _ = translate(old, [])
    new_help = subprocess.run([sys.executable, "-m", VERBS[new].module, *args, "--help"], capture_output=True,
                              text=True, cwd=REPO, env=env)
    assert new_help.returncode == 0 and new_help.stdout.startswith(f"usage: emlab {spec.new if old != 'steer' else new} ")
    for call, said in ((["experiments.cli", old], f"`emlab {old}` is now `emlab {new}`"),
                       ([f"experiments.{spec.module}"],
                        f"`python -m experiments.{spec.module}` is now `python -m {VERBS[new].module}`")):
        out = subprocess.run([sys.executable, "-m", *call, "--help"], capture_output=True, text=True, cwd=REPO, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout == new_help.stdout
        assert out.stderr.splitlines() == [f"{said}; the old name goes in the next release"]


def test_old_module_path_imported_is_the_new_module():
    import experiments.layer_sweep as old  # noqa: F401  (resolved by experiments.RenamedModules)
    import experiments.sweep_layers as new

    assert old is new


def test_renamed_flags_keep_their_values(monkeypatch):
    from experiments import verbs

    monkeypatch.setitem(verbs.RENAMED, "sweep", verbs.Renamed("sweep-layers", "layer_sweep", {"--old-limit": "--limit"}))
    new, args, changed = translate("sweep", ["--old-limit", "4", "--old-limit=5", "--contrast", "refusal"])
    assert (new, args) == ("sweep-layers", ["--limit", "4", "--limit=5", "--contrast", "refusal"])
    assert changed == ["--old-limit is now --limit"] * 2
