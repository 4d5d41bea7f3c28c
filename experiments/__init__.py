"""The `emlab` verbs: thin command-line edges over `lab/` (`python -m experiments.<verb> --help`).

`experiments.verbs` is the registry (verb -> module, workflow phase, one-line help). Old module
paths (`python -m experiments.layer_sweep`) run their new verb for one release, with a one-line
notice: `RenamedModules` below resolves them from `experiments.verbs.RENAMED`, so no file is
kept per old name.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys

from experiments.verbs import OLD_MODULES, RENAMED, VERBS  # noqa: F401  (the registry's face)


class RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """`experiments.<old module>`: run as `python -m`, it runs the new verb after the notice; imported,
    it is the new verb's module (one release)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in OLD_MODULES:
            new = importlib.util.find_spec(VERBS[RENAMED[OLD_MODULES[name]].new].module)
            return importlib.machinery.ModuleSpec(fullname, self, origin=new.origin)  # runpy's sys.argv[0]
        return None

    def get_source(self, fullname):
        old = OLD_MODULES[fullname.rpartition(".")[2]]
        new = VERBS[RENAMED[old].new].module
        return (f"import importlib, sys\n"
                f"if __name__ == '__main__':\n"
                f"    from experiments.verbs import run_old\n"
                f"    run_old({old!r}, via_module=True)\n"
                f"else:\n"
                f"    sys.modules[__name__] = importlib.import_module({new!r})\n")


if not any(isinstance(f, RenamedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, RenamedModules())  # before editable-install finders, which map any experiments.X
