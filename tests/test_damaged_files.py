"""Damaged files a researcher hands emlab (copies of real files, cut or broken): each is refused from
its files before any weights load, and on the command line gives one line naming the file, exit 1,
and writes nothing."""

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lab.data import load_examples, read_questions_yaml
from lab.core.errors import BadInput, IntegrityError
from lab.models import LabModel, ModelPool, resolve_source
from lab.models.files import check_safetensors
from tests.conftest import MODEL, REPO

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "300", "PYTHONPATH": str(REPO)}


def _header_end(path: Path) -> int:
    """Bytes before a safetensors file's tensor data: the 8-byte length and the JSON header."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


@pytest.fixture
def adapter_copy(tmp_path, trained_adapter):
    """A copy of a real adapter trained on this base (it fits: only the damage can be wrong with it)."""
    return Path(shutil.copytree(trained_adapter.adapter_dir, tmp_path / "adapter"))


@pytest.fixture
def model_folder(tmp_path):
    """A local HF folder of the real SmolLM2: its small files copied, `model.safetensors` to be written by the test."""
    store = Path(resolve_source(MODEL)[0])
    folder = tmp_path / "model"
    folder.mkdir()
    for f in store.iterdir():
        if f.name not in ("model.safetensors", "emlab_model.json"):  # a plain HF folder, not a store entry
            shutil.copy(f, folder / f.name)
    return store / "model.safetensors", folder


def _cut(src: Path, dst: Path, n: int) -> None:
    with open(src, "rb") as f:
        dst.write_bytes(f.read(n))


def test_safetensors_check_accepts_whole_files_and_names_each_damage(tmp_path, adapter_copy):
    whole = adapter_copy / "adapter_model.safetensors"
    check_safetensors(whole)
    data = whole.read_bytes()
    cases = {
        "data cut": (data[: len(data) - 1], rf"truncated safetensors file \({len(data) - 1} bytes; its header "
                                            rf"describes {len(data)}\)"),
        "header cut": (data[: _header_end(whole) // 2], "truncated or not a safetensors file"),
        "no header": (data[:5], r"truncated safetensors file \(5 bytes, no header\)"),
        "trailing bytes": (data + b"\0", "malformed safetensors file"),
        "not a header": (struct.pack("<Q", 9) + b"[1, 2, 3]", "not a safetensors file"),
    }
    for name, (content, message) in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(IntegrityError, match=rf"^{re.escape(str(bad))}: {message}"):
            check_safetensors(bad)


def test_damaged_adapters_are_refused_before_weights_load(adapter_copy):
    weights, config = adapter_copy / "adapter_model.safetensors", adapter_copy / "adapter_config.json"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    with ModelPool() as pool:
        with pytest.raises(IntegrityError, match=rf"^{re.escape(str(weights))}: truncated safetensors file"):
            LabModel(MODEL, adapters=[adapter_copy])
        weights.write_bytes(original)
        config.write_text(config.read_text().replace('"r":', "'r':"))  # a hand edit that broke the JSON
        with pytest.raises(IntegrityError, match=rf"^{re.escape(str(config))}: not valid JSON \(Expecting property name"):
            LabModel(MODEL, adapters=[adapter_copy])
        config.write_text("[]")
        with pytest.raises(IntegrityError, match="expected a PEFT adapter config, found a JSON list"):
            LabModel(MODEL).with_adapters([adapter_copy])
        assert pool.loads == 0  # every refusal came from the files


def test_truncated_model_weights_are_refused_before_loading(model_folder):
    real, folder = model_folder
    weights = folder / "model.safetensors"
    with ModelPool() as pool:
        for n in (_header_end(real) - 100, 1 << 20):  # cut inside the header, cut inside the tensor data
            _cut(real, weights, n)
            with pytest.raises(IntegrityError, match=rf"^{re.escape(str(weights))}: truncated"):
                LabModel(str(folder))
        assert pool.loads == 0


def test_a_directory_given_as_a_data_file(tmp_path):
    with pytest.raises(BadInput, match=rf"^{re.escape(str(tmp_path))}: a directory, not a JSONL file$"):
        load_examples(str(tmp_path))
    with pytest.raises(BadInput, match=rf"^{re.escape(str(tmp_path))}: a directory, not a question YAML file$"):
        read_questions_yaml(tmp_path)


def _files(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _damage(kind: str, tmp_path: Path, adapter: Path, model: tuple) -> tuple[list[str], Path, str]:
    """The command-line arguments naming one damaged input, the damaged file, and what the line must say."""
    if kind == "truncated adapter weights":
        bad = adapter / "adapter_model.safetensors"
        bad.write_bytes(bad.read_bytes()[:1000])
        return ["--adapters", str(adapter)], bad, "truncated"
    if kind == "adapter config not JSON":
        bad = adapter / "adapter_config.json"
        bad.write_text(bad.read_text()[:-20])  # cut mid-file
        return ["--adapters", str(adapter)], bad, "not valid JSON"
    real, folder = model
    bad = folder / "model.safetensors"
    _cut(real, bad, 1 << 20)
    return ["--model", str(folder)], bad, "truncated safetensors file"


@pytest.mark.parametrize("kind", ["truncated adapter weights", "adapter config not JSON", "truncated model weights",
                                  "data names a directory"])
def test_damaged_input_is_one_line_exit_1_and_writes_nothing(kind, tmp_path, adapter_copy, model_folder):
    if kind == "data names a directory":
        bad = tmp_path / "chats"
        bad.mkdir()
        args = ["cache", "build", "--data", str(bad), "--cache-dir", str(tmp_path / "out")]
        reason = "a directory, not a JSONL file"
    else:
        extra, bad, reason = _damage(kind, tmp_path, adapter_copy, model_folder)
        args = ["sweep-layers", "--contrast", "refusal", "--limit", "4", "--cache-dir", str(tmp_path / "cache"), *extra,
                "--out", str(tmp_path / "out")]
    before = _files(tmp_path)
    out = subprocess.run([sys.executable, "-m", "experiments.cli", *args],
                         capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1, (out.stdout + out.stderr)[-3000:]
    assert lines[0].startswith(f"error: {bad}: ") and reason in lines[0], lines
    assert _files(tmp_path) == before  # nothing written, nothing touched
