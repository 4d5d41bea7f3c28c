"""The command-line edge every verb shares: a verb's `main(argv)` and the program name its --help shows.

Everything else a verb needs is in the library (`lab.*`); experiments import this module and
`lab`, never each other.
"""

from __future__ import annotations

import lab  # noqa: F401  (environment before torch)


def prog_of(module: str) -> str:
    """The program name a verb's --help shows, the same however it is started (`emlab X`, `python -m`)."""
    import sys

    from experiments import VERBS

    spec = getattr(sys.modules.get(module), "__spec__", None)
    module = spec.name if module == "__main__" and spec is not None else module  # python -m experiments.X

    verb = next((v for v, (m, _) in VERBS.items() if m == module), module.rsplit(".", 1)[-1])
    return f"emlab {verb}"


def cli(config_cls, run):
    """An experiment's `main(argv)`: parse its config dataclass, run, print user errors as one line."""
    def main(argv=None) -> None:
        from lab.core.config import parse_config
        from lab.core.console import user_errors
        from lab.models import ModelPool

        with user_errors(), ModelPool():  # one copy of the weights for the whole command
            run(parse_config(config_cls, argv, prog=prog_of(run.__module__)))
    return main


def show(result) -> None:
    """Print a typed result's tables (`lab.reports.tables`: the one rendering of each row type)."""
    from lab.core.console import console, table
    from lab.reports.tables import tables

    for title, rows in tables(result):
        console.print(table(title, rows))
