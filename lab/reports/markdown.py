"""Markdown tables: the one writer of the `.md` tables verbs leave beside their JSON."""

from __future__ import annotations

from typing import Any, Sequence


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> list[str]:
    """The lines of a markdown table of `rows` (columns: `columns`, else the first row's keys; no rows and
    no columns: no lines)."""
    if not rows and not columns:
        return []
    cols = list(columns or rows[0])
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows)]


def em_table_markdown(rows) -> str:
    """The EM table (`lab.em.table.EmRow`s) as markdown, one line per row."""
    cells = [r.cells() for r in rows]
    return "\n".join(markdown_table(cells) or ["|  |", "|"]) + "\n"
