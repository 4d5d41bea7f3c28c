"""Shared rich console, progress bars and tables for the CLI and experiments."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from lab.core.errors import EmlabError

console = Console(stderr=False, width=None if sys.stdout.isatty() else 140)


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def table(title: str, rows: list[dict], columns: list[str] | None = None, fmt: str = "{:.3f}") -> Table:
    columns = columns or (list(rows[0]) if rows else [])
    t = Table(title=title, header_style="bold cyan")
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*[fmt.format(v) if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in columns)])
    return t


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print an EmlabError as one red line and exit 1 (no traceback for user mistakes)."""
    try:
        yield
    except EmlabError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)




def print_any(obj: Any) -> None:
    console.print(obj)
