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

from experiments import VERBS
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


@pytest.mark.parametrize("verb", ["eval", "cache build"])
def test_help_alike_as_module_and_as_emlab(verb):
    env = {**os.environ, "COLUMNS": "120"}
    run = lambda *args: subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True, text=True,  # noqa: E731
                                       cwd=REPO, env=env)
    direct, routed = run(VERBS[verb][0]), run("experiments.cli", *verb.split())
    assert direct.returncode == routed.returncode == 0
    assert direct.stdout == routed.stdout and direct.stdout.startswith(f"usage: emlab {verb} ")


def test_literal_fields_are_choices(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert "--dtype {float32,float16,bfloat16}" in _module_help("experiments.cache_build")
    assert "--judge-scheme {auto,logprob100,digit10}" in _module_help("experiments.em_eval")
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "steer", "--target", "nonsense"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "invalid choice: 'nonsense' (choose from 'refusal', 'em')" in out.stderr


def test_configs_built_in_python_check_their_choices():
    from experiments.cache_build import CacheBuildConfig
    from lab.core.errors import BadInput

    with pytest.raises(BadInput, match=r"^--dtype must be one of float32, float16, bfloat16, not 'float8'$"):
        CacheBuildConfig(data="refusal", dtype="float8")
    assert CacheBuildConfig(data="refusal", dtype="bfloat16").dtype == "bfloat16"
