"""One config dataclass per experiment, which is also its command line (SAELens style).

    @dataclass
    class SweepConfig:
        model: str = field(default="smollm2-135m-instruct", metadata={"help": "model name or folder"})
        layers: list[int] = field(default_factory=list)

    cfg = parse_config(SweepConfig)          # --model X --layers 3 4 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def _arg_type(tp: Any) -> tuple[Any, dict]:
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return _arg_type(inner)[0], {"nargs": "*"}
    if origin is typing.Union or str(origin) == "types.UnionType":
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _arg_type(inner)
    return tp, {}


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Build an argparse parser from a dataclass's fields and return the filled dataclass."""
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description or cls.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        tp, extra = _arg_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", " ")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        else:
            parser.add_argument(flag, type=tp, default=default, help=helptext, **extra)
    return cls(**vars(parser.parse_args(argv)))


def config_dict(cfg: Any) -> dict:
    """The config as plain JSON values (exact: numbers stay numbers; see `lab.io.json_default`)."""
    from lab.io import dumps

    return json.loads(dumps(dataclasses.asdict(cfg)))
