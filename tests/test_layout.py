"""The package layout: lab/ holds only packages, data flows one way through them, experiments do
not import each other, and the package faces are lazy (importing a package loads no torch).

Import edges are read from the source (AST), at module level and inside functions alike; an
import under `if TYPE_CHECKING:` is not an edge (it never runs).
"""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "lab"

# The data flow, first to last. A package may import itself and the packages of earlier layers,
# never a later one; packages of one layer do not import each other.
LAYERS = [{"core"}, {"stats"}, {"data"}, {"models"}, {"training"}, {"cache"}, {"directions"}, {"intervene"},
          {"judge"}, {"em"}, {"diffing", "causal"}, {"reports"}, {"study"}]

# Temporary back edges (importer module -> imported module), each removed by a later step of the
# redesign. The list must shrink: an edge that no longer exists fails the test until it is deleted.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()

# Modules every experiment may import: the package (the import-free VERBS registry) and the
# command-line edge every verb shares (`cli`, `show`).
SHARED_EXPERIMENT_MODULES = {"experiments", "experiments.verbs", "experiments.common"}

# Experiment -> experiment imports: none (what two verbs share lives in lab).
KNOWN_EXPERIMENT_EDGES: set[tuple[str, str]] = set()

LAZY_FACES = ["lab.core", "lab.stats", "lab.data", "lab.training", "lab.intervene", "lab.em", "lab.diffing", "lab.causal",
              "lab.study"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Modules `path` imports (`from pkg import sub` counts as pkg.sub when sub is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            for a in node.names:
                sub = REPO.joinpath(*node.module.split("."), a.name)
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    found.add(f"{node.module}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _edges(root: str) -> set[tuple[str, str]]:
    return {(_module_name(p), m) for p in sorted((REPO / root).rglob("*.py")) for m in _imports(p)}


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_lab_top_level_holds_only_packages():
    loose = sorted(p.name for p in LAB.iterdir()
                   if p.name not in {"__init__.py", "__pycache__"} and not (p / "__init__.py").exists())
    assert loose == [], f"lab/ holds only __init__.py and packages; move these into one: {loose}"


def test_every_package_has_a_place_in_the_data_flow():
    packages = {p.name for p in LAB.iterdir() if (p / "__init__.py").exists()}
    placed = set().union(*LAYERS)
    assert packages <= placed, f"add these packages to LAYERS (and to lab/__init__'s picture): {packages - placed}"


def test_no_package_imports_a_later_one():
    back = set()
    for importer, imported in _edges("lab"):
        if not imported.startswith("lab.") or importer == "lab":
            continue
        src, dst = importer.split(".")[1], imported.split(".")[1]
        if src != dst and _layer(dst) >= _layer(src):
            back.add((importer, imported))
    assert back - KNOWN_BACK_EDGES == set(), "imports against the data flow (see LAYERS)"
    assert KNOWN_BACK_EDGES - back == set(), "these back edges are gone: delete them from KNOWN_BACK_EDGES"


def test_no_experiment_imports_another():
    edges = {(a, b) for a, b in _edges("experiments")
             if b.startswith("experiments") and b not in SHARED_EXPERIMENT_MODULES and a != b}
    assert edges - KNOWN_EXPERIMENT_EDGES == set(), "an experiment imports another: put the shared part in lab"
    assert KNOWN_EXPERIMENT_EDGES - edges == set(), "these edges are gone: delete them from KNOWN_EXPERIMENT_EDGES"


def _loads_torch(code: str) -> bool:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_import_lab_and_its_lazy_faces_load_no_torch():
    assert not _loads_torch("import " + ", ".join(["lab", *LAZY_FACES]))
    assert _loads_torch("import lab.intervene; lab.intervene.answer_logprobs")  # the probe can see torch arrive


def test_emlab_help_loads_no_torch():
    code = ("sys.argv = ['emlab', '--help']\nfrom experiments.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    assert not _loads_torch(code)


@pytest.mark.parametrize("package", LAZY_FACES)
def test_face_names_resolve_to_their_modules(package):
    face = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(face.__path__)}
    assert set(face.__all__).isdisjoint(submodules), "a face name equal to a submodule's is shadowed by it"
    assert len(face.__all__) == len(set(face.__all__))
    home = {name: module for module, names in face.FACE.items() for name in names.split()}
    for name in face.__all__:
        defining = importlib.import_module(f"{package}.{home[name]}")
        assert getattr(face, name) is getattr(defining, name), f"{package}.{name}"
    assert set(face.__all__) <= set(dir(face))
    with pytest.raises(AttributeError):
        getattr(face, "no_such_name")


def test_data_face_shows_every_public_name_of_formats():
    """`from lab.data import X` keeps working for every public name the flat data module defined."""
    import lab.data

    tree = ast.parse((LAB / "data" / "formats.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    public = {name for name in defined if not name.startswith("_")}
    assert public - set(lab.data.__all__) == set()
