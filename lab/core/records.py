"""Typed results to JSON and back, exactly: the codec every result dataclass uses.

A result is a (frozen) dataclass whose fields are numbers, strings, paths, other results,
`lab.stats.Estimate`s, and lists, tuples and dicts of those. `Record` gives it
`to_json()` / `from_json()`:

    @dataclass(frozen=True)
    class BestLayer(Record):
        method: str
        layer: int
        auroc: Estimate

    BestLayer.from_json(json.loads(json.dumps(b.to_json()))) == b      # True: floats round-trip exactly

Field types are read from the annotations (`typing.get_type_hints`), so a type used in a field
must be importable where the class is defined (not only under `TYPE_CHECKING`). A class with
its own `to_json` / `from_json` (e.g. `Estimate`, `ScoreDelta`) keeps its own format.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np


class Record:
    """Mixin: `to_json()` and `from_json(d)` of a result dataclass, by its field annotations."""

    def to_json(self) -> Any:
        return to_json(self)

    @classmethod
    def from_json(cls, data: Any):
        return _dataclass_from_json(cls, data)


def _own_to_json(obj: Any) -> bool:
    method = getattr(type(obj), "to_json", None)
    return method is not None and method is not Record.to_json


def _own_from_json(cls: type) -> bool:
    method = getattr(cls, "from_json", None)
    return method is not None and getattr(method, "__func__", None) is not Record.from_json.__func__


def to_json(obj: Any) -> Any:
    """Plain JSON values of a result (dataclasses by field; tuples as lists; paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if _own_to_json(obj):
            return obj.to_json()
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _dataclass_from_json(cls: type, data: dict) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: from_json(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)
              if f.init and f.name in data}
    return cls(**kwargs)


def from_json(tp: Any, data: Any) -> Any:
    """The value of type `tp` that `to_json` wrote as `data`."""
    if tp is Any:
        return data
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return from_json(options[0], data)
        dataclass_options = [a for a in options if dataclasses.is_dataclass(a)]
        if isinstance(data, dict) and len(dataclass_options) == 1:
            return from_json(dataclass_options[0], data)
        return data  # a union of plain types (int | str): the value is already the one it was
    if origin is Literal:
        return data
    if origin in (list, typing.Sequence) or tp is list:
        inner = args[0] if args else Any
        return [from_json(inner, x) for x in data]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], x) for x in data)
        return tuple(from_json(a, x) for a, x in zip(args, data)) if args else tuple(data)
    if origin is dict or tp is dict:
        key, value = args if args else (Any, Any)
        return {(int(k) if key is int else k): from_json(value, v) for k, v in data.items()}
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return tp.from_json(data) if _own_from_json(tp) or issubclass(tp, Record) else _dataclass_from_json(tp, data)
        if issubclass(tp, PurePath):
            return Path(data)
        if tp is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
    return data
