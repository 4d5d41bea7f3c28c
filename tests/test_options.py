"""Option names across verbs: one meaning per name, a glossary that lists every shared one, and
old spellings that still give the same config (with one notice) for one release."""

import argparse
import importlib
import re
import subprocess
import sys
import types
import typing

import pytest

from experiments.verbs import VERBS
from lab.core.config import build_parser, parse_config, translate_old_flags
from tests.conftest import REPO

# The one name whose values differ in syntax between verbs while meaning the same thing (the
# layers a verb acts on): plain layer numbers everywhere, and named sets in two verbs
# (diff-adapter: middle|final|3,7,12; ablate-em: all|best). docs/verbs.md says so.
NAMED_SETS = {"--layers"}


def verb_configs() -> list[tuple[str, type]]:
    """(verb, config class) of every verb; a merged verb gives one per selector value."""
    out = []
    for verb, spec in VERBS.items():
        main = importlib.import_module(spec.module).main
        if hasattr(main, "config"):
            out.append((verb, main.config))
        elif hasattr(main, "variants"):
            out += [(f"{verb} {key}", cls) for key, (cls, _) in main.variants.items()]
    return out


def options(cls: type) -> dict[str, tuple]:
    """flag -> (kind, value type, nargs) of a config's parser (`--no-x` halves left out)."""
    found = {}
    for action in build_parser(cls)._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-") and flag != "--help":
                kind = "switch" if isinstance(action, argparse.BooleanOptionalAction) else "value"
                found[flag] = (kind, getattr(action.type, "__name__", str(action.type)), action.nargs)
    return found


CONFIGS = verb_configs()


def test_an_option_name_has_one_type_in_every_verb():
    """A name that is a switch in one verb and a count in another (`--show`), or a list here and a
    string there, means two things: each name's kind, value type and arity agree across verbs."""
    seen: dict[str, dict[tuple, list[str]]] = {}
    for verb, cls in CONFIGS:
        for flag, shape in options(cls).items():
            seen.setdefault(flag, {}).setdefault(shape, []).append(verb)
    clashes = {flag: shapes for flag, shapes in seen.items() if len(shapes) > 1 and flag not in NAMED_SETS}
    assert clashes == {}


def test_every_option_two_verbs_share_is_in_the_glossary():
    """docs/verbs.md's glossary gives each shared option its one meaning; a new shared option must be added."""
    text = (REPO / "docs" / "verbs.md").read_text()
    glossary = text[text.index("## Options"):text.index("## Renamed options")]
    listed = set(re.findall(r"`(--[a-z0-9-]+)", glossary))
    count: dict[str, int] = {}
    for _, cls in CONFIGS:
        for flag in options(cls):
            count[flag] = count.get(flag, 0) + 1
    shared = {flag for flag, n in count.items() if n >= 2}
    assert sorted(shared - listed) == []


def _value(cls: type, flag: str) -> list[str]:
    """A planted value the flag accepts, as command-line words."""
    name = flag[2:].replace("-", "_")
    tp = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    inner = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp  # Optional[T] -> T
    if typing.get_origin(inner) is list:
        return {int: ["1", "2"], str: ["a=b", "c=d"]}[typing.get_args(inner)[0]]
    if typing.get_origin(inner) is typing.Literal:
        return [str(typing.get_args(inner)[-1])]
    return {int: ["3"], float: ["2.5"], str: ["x"], bool: []}[inner]


OLD = [(verb, cls, old, spec) for verb, cls in CONFIGS for old, spec in getattr(cls, "OLD_FLAGS", {}).items()]


@pytest.mark.parametrize("verb,cls,old,spec", OLD, ids=[f"{v}:{o}" for v, _, o, _ in OLD])
def test_an_old_spelling_gives_the_config_of_the_new_one(verb, cls, old, spec, capsys):
    """`--old V` parses to exactly the config `--new V'` does (V' = V x scale; a choice that
    became a switch gives the switch), and says so in one stderr line naming both spellings."""
    required = [word for action in build_parser(cls)._actions if action.required
                for word in (action.option_strings[0], *_value(cls, action.option_strings[0]))]
    if spec.switch:
        choice, switch = next(iter(spec.switch.items()))
        old_argv, new_argv = [old, choice], [switch]
    else:
        value = _value(cls, spec.new)
        scaled = [f"{float(v) * spec.scale:.10g}" for v in value] if spec.scale != 1.0 else value
        old_argv, new_argv = [old, *value], [spec.new, *scaled]
    if spec.only_with:  # a name whose meaning moved: read the old way only beside the other old flag
        partner = getattr(cls, "OLD_FLAGS")[spec.only_with]
        old_argv += [spec.only_with, "float32"]
        new_argv += [partner.new, "float32"]
    assert old != spec.new and spec.new in options(cls)
    got = parse_config(cls, required + old_argv)
    notice = capsys.readouterr().err.strip().splitlines()
    assert got == parse_config(cls, required + new_argv)
    assert len(notice) == 1 and f"`{old}" in notice[0] and f"`{new_argv[0]}" in notice[0]
    assert "next release" in notice[0]


def test_an_old_name_whose_meaning_moved_is_read_the_new_way_with_a_notice():
    """`cache build --dtype` was the storage dtype; alone it is now the compute dtype, and says so."""
    from experiments.cache_build import CacheBuildConfig

    argv, changes = translate_old_flags(CacheBuildConfig, ["--data", "refusal", "--dtype", "bfloat16"])
    assert argv == ["--data", "refusal", "--dtype", "bfloat16"] and len(changes) == 1 and "--storage" in changes[0]
    assert translate_old_flags(CacheBuildConfig, ["--dtype", "bfloat16", "--storage", "float16"])[1] == []


def test_old_spellings_reach_merged_verbs_and_help(tmp_path):
    """Through `emlab`, a merged verb's job translates its own old options (minutes become seconds)."""
    for argv, said in ((["identify-domains", "--budget-min", "2", "--help"], "`--budget-min 2` is now `--wall-budget-s 120`"),
                       (["checkpoints", "--measure", "adapters", "--ks", "1", "2", "--help"],
                        "`--ks` is now `--step-gaps`")):
        out = subprocess.run([sys.executable, "-m", "experiments.cli", *argv], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0 and said in out.stderr and "Traceback" not in out.stderr


def test_a_bad_value_of_an_old_spelling_is_one_line():
    from lab.core.errors import BadInput
    from lab.diffing.domain_id import DomainIdConfig
    from lab.em.organisms import EmTableConfig

    with pytest.raises(BadInput, match=r"^--budget-min takes a number, not 'soon'$"):
        translate_old_flags(DomainIdConfig, ["--budget-min", "soon"])
    with pytest.raises(BadInput, match=r"^--judges must be one of fit, none, not 'some'$"):
        translate_old_flags(EmTableConfig, ["--judges", "some"])
