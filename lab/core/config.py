"""One config dataclass per experiment, which is also its command line (SAELens style).

    @dataclass
    class SweepConfig(Config):
        model: str = field(default=DEFAULT_MODEL, metadata={"help": "model name or folder"})
        layers: list[int] = field(default_factory=list)
        device: Literal["cpu", "cuda", "auto"] = "cpu"     # becomes --device {cpu,cuda,auto}

    cfg = parse_config(SweepConfig)          # --model X --layers 3 4 5 --device cuda

Field types map to flags: `bool` -> `--x/--no-x`, `list[T]` -> `--x A B C`, `T | None` ->
T, and `Literal[...]` -> argparse `choices`; a config that subclasses `Config` also checks
them when built in Python. So a config needs no membership check of its own: a wrong value
is refused, with the allowed ones listed, before the experiment runs.

An option name means one thing in every verb (`docs/verbs.md` lists them). A renamed option's
old spelling keeps working for one release: the config lists it in `OLD_FLAGS`, and the
command line is translated, with one stderr line saying so, before it is parsed:

    OLD_FLAGS = {"--budget-min": OldFlag("--wall-budget-s", scale=60)}   # 5 minutes -> 300 s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
import sys
from typing import Any, Literal, NamedTuple, Sequence, TypeVar

T = TypeVar("T")

# Folder defaults every verb shares, named once.
DEFAULT_CACHE_DIR = "cache"  # activation caches, organisms, stage results
DEFAULT_OUT = "figures"  # tables, figures, reports


def _arg_type(tp: Any) -> tuple[Any, dict]:
    """(argparse `type`, extra `add_argument` keywords) of a field's annotation."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return _arg_type(inner)[0], {**_arg_type(inner)[1], "nargs": "*"}
    if origin is typing.Union or str(origin) == "types.UnionType":
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _arg_type(inner)
    if origin is Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), {"choices": choices}
    return tp, {}


def literal_choices(cls: type, name: str) -> tuple:
    """The allowed values of a config's `Literal` field (for code that lists them)."""
    return _arg_type(typing.get_type_hints(cls)[name])[1].get("choices", ())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every verb's --help: one line per flag with its choices and default (unless empty or already said)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, "", []) or action.required:
            return text
        return super()._get_help_string(action) or text


class Config:
    """Base of every verb's config dataclass: `Literal` fields are checked on construction too,
    so a config built in Python (or by the study) refuses a bad value like its command line does."""

    def __post_init__(self) -> None:
        check_choices(self)


def check_choices(cfg: Any) -> None:
    """Raise `BadInput` (one line naming the flag) if a `Literal` field holds another value."""
    from lab.core.errors import BadInput

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        choices = _arg_type(hints[f.name])[1].get("choices")
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        optional = type(None) in typing.get_args(hints[f.name])  # Optional[Literal[...]]: None means "not given"
        if choices and any(v not in choices and not (v is None and optional) for v in values):
            flag = "--" + f.name.replace("_", "-")
            raise BadInput(f"{flag} must be one of {', '.join(map(str, choices))}, not {value!r}")


class OldFlag(NamedTuple):
    """An option's old spelling, kept working for one release (a config's `OLD_FLAGS`)."""

    new: str  # the flag that replaces it, e.g. "--wall-budget-s"
    scale: float = 1.0  # the new value is the old one times this (minutes -> seconds: 60)
    switch: dict = {}  # an old choice that became a switch: {"none": "--no-judge-answers"}
    only_with: str = ""  # applies only beside this other old flag (a name whose meaning moved)


def translate_old_flags(cls: type, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(argv with `cls.OLD_FLAGS` spelled anew, one "`old` is now `new`" per change)."""
    from lab.core.errors import BadInput

    old_flags: dict[str, OldFlag] = getattr(cls, "OLD_FLAGS", {})
    given = {a.partition("=")[0] for a in argv}
    out, changes, args, translated = [], [], list(argv), set()
    while args:
        arg = args.pop(0)
        flag, eq, value = arg.partition("=")
        spec = old_flags.get(flag)
        if spec is None or (spec.only_with and spec.only_with not in given):
            out.append(arg)
            continue
        translated.add(flag)
        if spec.scale == 1.0 and not spec.switch:  # same value, new name (lists keep their values)
            out.append(spec.new + eq + value)
            changes.append(f"`{flag}` is now `{spec.new}`")
            continue
        if not eq:
            if not args:
                raise BadInput(f"{flag} needs a value")
            value = args.pop(0)
        if spec.switch:
            if value not in spec.switch:
                raise BadInput(f"{flag} must be one of {', '.join(spec.switch)}, not {value!r}")
            out.append(spec.switch[value])
            changes.append(f"`{flag} {value}` is now `{spec.switch[value]}`")
            continue
        try:
            new_value = f"{float(value) * spec.scale:.10g}"
        except ValueError:
            raise BadInput(f"{flag} takes a number, not {value!r}") from None
        out += [spec.new, new_value]
        changes.append(f"`{flag} {value}` is now `{spec.new} {new_value}`")
    for flag, (text, clear_with) in getattr(cls, "MEANING_MOVED", {}).items():
        # a name whose meaning moved (and that no old spelling beside it explains): say so while
        # the other flag that would make the intent plain is absent
        if flag in given and clear_with not in given and flag not in translated:
            changes.append(text)
    return out, changes


def announce_old_flags(changes: Sequence[str]) -> None:
    """The one stderr line for old option spellings (nothing when there are none)."""
    if changes:
        print(f"emlab: {'; '.join(changes)}; the old spellings go in the next release", file=sys.stderr)


def build_parser(cls: type, prog: str | None = None, description: str | None = None,
                 defaults: dict | None = None) -> argparse.ArgumentParser:
    """The argparse parser of a config dataclass: one flag per field, its default shown in --help.

    `defaults` replaces field defaults (a profile's values: see `profile_defaults`)."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    # no prefix matching: `--adapter DIR` must not be read silently as `--adapters DIR`
    parser = argparse.ArgumentParser(prog=prog, description=description or cls.__doc__,
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    hidden = getattr(cls, "HIDDEN", ())  # fields a verb fixes (e.g. steer-em's target): no flag, their default
    for f in dataclasses.fields(cls):
        if f.name in hidden:
            continue
        tp, extra = _arg_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", " ")
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # a field without a default is a required flag
            parser.add_argument(flag, type=tp, required=True, help=helptext, **extra)
            continue
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        else:
            parser.add_argument(flag, type=tp, default=default, help=helptext, **extra)
    return parser


def profile_defaults(cls: type, name: str | None) -> dict:
    """The field values a named profile sets (a config class lists them in `PROFILES`; {} for none).

    A profile changes defaults only: flags given on the command line (or keywords in Python)
    still win, and `--help` after `--profile NAME` shows the profile's values."""
    profiles = getattr(cls, "PROFILES", {})
    if name in (None, "", "default"):
        return {}
    if name not in profiles:
        from lab.core.errors import BadInput

        raise BadInput(f"--profile must be one of default, {', '.join(profiles)}, not {name!r}")
    return {**profiles[name], "profile": name}


def from_profile(cls: type[T], name: str, **overrides) -> T:
    """A config built from a profile's values, then `overrides` (the Python form of `--profile NAME ...`)."""
    return cls(**{**profile_defaults(cls, name), **overrides})


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None,
                 prog: str | None = None) -> T:
    """Build an argparse parser from a dataclass's fields and return the filled dataclass.

    A config with `PROFILES` is parsed in two passes: `--profile NAME` first, whose values
    become the defaults of the real parse."""
    defaults = {}
    if getattr(cls, "PROFILES", None):
        first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        first.add_argument("--profile", default=None)
        defaults = profile_defaults(cls, first.parse_known_args(argv)[0].profile)
    argv, changes = translate_old_flags(cls, sys.argv[1:] if argv is None else argv)
    announce_old_flags(changes)
    return cls(**vars(build_parser(cls, prog, description, defaults).parse_args(argv)))


def config_dict(cfg: Any) -> dict:
    """The config as plain JSON values (exact: numbers stay numbers; see `lab.core.io.json_default`)."""
    from lab.core.io import dumps

    return json.loads(dumps(dataclasses.asdict(cfg)))


def parse_pairs(flag: str, specs: Sequence[str], value: str = "VALUE") -> dict[str, str]:
    """`NAME=VALUE` command-line pairs -> {name: value}, in order; one `BadInput` line naming the
    flag for a spec without a name or a value (e.g. `parse_pairs("--organisms", specs, "ADAPTER_DIR")`)."""
    from lab.core.errors import BadInput

    pairs = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise BadInput(f"{flag} {spec!r}: expected NAME={value}")
        pairs[name] = rest
    return pairs
