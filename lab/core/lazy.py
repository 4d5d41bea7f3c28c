"""Lazy package faces (PEP 562): a package names what it shows, and each name's module loads on first use.

    # lab/stats/__init__.py
    from lab.core.lazy import face_names, lazy_face

    FACE = {"estimate": "Estimate mean_ci", "metrics": "auroc"}     # submodule: the names it shows
    __all__ = face_names(FACE)
    __getattr__, __dir__ = lazy_face(__name__, FACE)

`import lab.stats` then imports nothing but this helper: `lab.stats.Estimate` imports
`lab.stats.estimate` on first access and keeps the result in the package. So importing a
package never pulls in torch, and a face cannot close an import cycle (no module a face names
is imported while the package itself loads). A submodule not named in the face is imported on
attribute access too (`lab.data.formats` after a bare `import lab.data`).

A face name must not equal a submodule name: importing `lab.diffing.adl` sets the package
attribute `adl` to the module, so a function of that name could not be shown beside it
(tests/test_layout.py checks this).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Callable


def face_names(face: dict[str, str]) -> list[str]:
    """The names a face shows, in its order: `{"estimate": "Estimate mean_ci"}` -> ["Estimate", "mean_ci"]."""
    return [name for names in face.values() for name in names.split()]


def lazy_face(package: str, face: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`; `face` maps each submodule to the names it shows."""
    names = {name: module for module, listed in face.items() for name in listed.split()}

    def __getattr__(name: str) -> object:
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
            setattr(sys.modules[package], name, value)
            return value
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
