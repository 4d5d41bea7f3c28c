"""The command-line edge every verb shares: a verb's `main(argv)` and the program name its --help shows.

Everything else a verb needs is in the library (`lab.*`); experiments import this module,
`experiments.verbs` and `lab`, never each other.
"""

from __future__ import annotations

import lab  # noqa: F401  (environment before torch)


def prog_of(module: str) -> str:
    """The program name a verb's --help shows, the same however it is started (`emlab X`, `python -m`)."""
    import sys

    from experiments.verbs import VERBS

    spec = getattr(sys.modules.get(module), "__spec__", None)
    module = spec.name if module == "__main__" and spec is not None else module  # python -m experiments.X

    verb = next((v for v, entry in VERBS.items() if entry.module == module), module.rsplit(".", 1)[-1])
    return f"emlab {verb}"


def cli(config_cls, run):
    """An experiment's `main(argv)`: parse its config dataclass, run, print user errors as one line."""
    def main(argv=None) -> None:
        from lab.core.config import parse_config
        from lab.core.console import user_errors
        from lab.models import ModelPool

        with user_errors(), ModelPool():  # one copy of the weights for the whole command
            run(parse_config(config_cls, argv, prog=prog_of(run.__module__)))
    main.config = config_cls  # what --help is built from
    return main


def routed(flag: str, variants: dict, description: str, module: str):
    """`main(argv)` of a verb whose `flag` (e.g. `--measure`) picks one of several jobs, each a
    (config class, run) pair: the chosen config's options follow, and `--help` shows them under
    the verb's own description (`emlab checkpoints --measure shifts --help`)."""
    def main(argv=None) -> None:
        import argparse
        import sys

        from lab.core.config import announce_old_flags, build_parser, translate_old_flags
        from lab.core.console import user_errors
        from lab.models import ModelPool

        argv = sys.argv[1:] if argv is None else list(argv)
        first = argparse.ArgumentParser(add_help=False, prog=prog_of(module))
        first.add_argument(flag, choices=list(variants), default=next(iter(variants)))
        dest = flag.lstrip("-").replace("-", "_")
        chosen = getattr(first.parse_known_args(argv)[0], dest)
        config_cls, run = variants[chosen]
        argv, changes = translate_old_flags(config_cls, argv)
        announce_old_flags(changes)
        parser = build_parser(config_cls, prog_of(module), description)
        parser.add_argument(flag, choices=list(variants), default=next(iter(variants)),
                            help="which job runs; the options listed are those of the chosen job")
        values = vars(parser.parse_args(argv))
        values.pop(dest)
        with user_errors(), ModelPool():
            run(config_cls(**values))
    main.variants = variants
    return main


def show(result) -> None:
    """Print a typed result's tables (`lab.reports.tables`: the one rendering of each row type)."""
    from lab.core.console import console, table
    from lab.reports.tables import tables

    for title, rows in tables(result):
        console.print(table(title, rows))


def steer_and_report(cfg):
    """Run a steering verb's config (`lab.causal.steer.run_steering`): figures, tables, the best
    addition under the coherence floor, and the result file."""
    from lab.causal.steer import run_steering
    from lab.core.console import console
    from lab.core.io import write_result
    from lab.reports.figures import write_figures

    result = run_steering(cfg)
    write_figures(result)
    show(result)
    if result.pick:
        p = result.pick
        console.print(f"best addition under coherence floor {cfg.coherence_floor}: layer {p.layer} x{p.ratio} "
                      f"-> {result.metric} {p.effect(result.metric).value:.3f}")
    write_result(result)
    return result
