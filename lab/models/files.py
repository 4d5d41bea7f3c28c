"""Checks that a model folder's or an adapter folder's files are whole, before anything loads them.

A truncated or malformed file would otherwise fail deep inside safetensors, transformers or
peft (a traceback, or a misleading "does not fit this base model"), possibly after the base
weights were loaded. These checks read only small parts of the files (a safetensors header,
a JSON file) and raise `IntegrityError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from lab.core.errors import BadInput, IntegrityError

_SAFETENSORS_HEADER_MAX = 100 << 20  # the safetensors library refuses larger headers too
_CHECKED: set[tuple] = set()  # (path, size, mtime) of safetensors files found whole in this process


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header is unreadable or whose size differs from what its header describes.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's byte
    range (`data_offsets`, relative to the end of the header), then the tensor bytes; a whole
    file ends exactly at the largest range end.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return
    size = st.st_size
    with open(path, "rb") as f:
        if size < 8:
            raise IntegrityError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _SAFETENSORS_HEADER_MAX or 8 + n > size:
            raise IntegrityError(f"{path}: truncated or not a safetensors file ({size} bytes, but its first 8 "
                                 f"bytes give a {n}-byte header)")
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise IntegrityError(f"{path}: not a safetensors file (its header is not a tensor table)") from None
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise IntegrityError(f"{path}: truncated safetensors file ({size} bytes; its header describes {expected})")
    if size > expected:
        raise IntegrityError(f"{path}: malformed safetensors file ({size} bytes; its header describes {expected})")
    _CHECKED.add(key)


def read_json_file(path: Path, what: str = "JSON object") -> dict[str, Any]:
    """A JSON object from `path`; a file that is not one is an `IntegrityError` naming it."""
    if path.is_dir():
        raise BadInput(f"{path}: a directory, not a {what} file")
    try:
        obj = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise IntegrityError(f"{path}: not UTF-8 (expected a {what})") from None
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{path}: expected a {what}, found a JSON {type(obj).__name__}")
    return obj


def check_model_folder(path: Path) -> None:
    """A local Hugging Face folder: its config and weight index are JSON objects, every safetensors file is whole."""
    read_json_file(path / "config.json", "model config")
    for index in sorted(path.glob("*.safetensors.index.json")):
        read_json_file(index, "weight index")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)


def check_adapter_folder(path: Path) -> None:
    """A PEFT adapter folder: both files present, the config a JSON object, the weights a whole safetensors file."""
    if not path.is_dir():
        raise BadInput(f"{path}: no such adapter folder")
    files = [path / "adapter_config.json", path / "adapter_model.safetensors"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BadInput(f"{path} is not a PEFT adapter folder (missing {', '.join(missing)})")
    read_json_file(files[0], "PEFT adapter config")
    check_safetensors(files[1])
