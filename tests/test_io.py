"""Exact JSON: numpy numbers stay numbers of the same kind; what cannot be written exactly is an error."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lab.core.config import config_dict
from lab.core.io import sha256_json, write_json_atomic, write_rows


@dataclass
class _Cfg:
    layers: list
    path: Path
    scale: float


def test_numpy_scalars_are_written_exactly(tmp_path):
    obj = {"i": np.int64(3), "u": np.uint8(7), "f": np.float32(0.5), "d": np.float64(0.1), "b": np.bool_(True),
           "zero_d": np.array(4), "vec": np.arange(3, dtype=np.int32), "path": Path("a/b")}
    write_json_atomic(tmp_path / "x.json", obj)
    back = json.loads((tmp_path / "x.json").read_text())
    assert back == {"i": 3, "u": 7, "f": 0.5, "d": 0.1, "b": True, "zero_d": 4, "vec": [0, 1, 2], "path": "a/b"}
    assert type(back["i"]) is int and type(back["f"]) is float and type(back["b"]) is bool
    # a numpy number hashes like the Python number it holds, never like its string
    assert sha256_json({"n": np.int64(3)}) == sha256_json({"n": 3}) != sha256_json({"n": "3"})
    write_rows([{"n": np.int64(2), "x": np.float32(1.5)}], tmp_path / "rows")
    assert json.loads((tmp_path / "rows.json").read_text()) == [{"n": 2, "x": 1.5}]


def test_config_dict_keeps_numbers():
    got = config_dict(_Cfg(layers=[np.int64(1), 2], path=Path("p"), scale=np.float32(2.0)))
    assert got == {"layers": [1, 2], "path": "p", "scale": 2.0} and type(got["layers"][0]) is int


@pytest.mark.parametrize("bad", [object(), {1, 2}, b"bytes", np.complex64(1j), np.datetime64("2020-01-01")])
def test_unknown_types_are_an_error(tmp_path, bad):
    with pytest.raises(TypeError, match="cannot write .* as JSON"):
        write_json_atomic(tmp_path / "x.json", {"bad": bad})
    with pytest.raises(TypeError, match="cannot write"):
        sha256_json([bad])
    assert not (tmp_path / "x.json").exists()
