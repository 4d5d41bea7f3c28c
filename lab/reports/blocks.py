"""The blocks a report page is made of (text, tables, images, answers, trusted HTML, headline
panels) and the `Section` that groups them; `lab.reports` renders them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

_SECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

# Markup that would make the browser fetch something from another host: attributes and
# CSS urls pointing at `//host` or `http(s)://host`, CSS @import, and ES module imports.
_EXTERNAL_REF = re.compile(
    r"""(?:\b(?:src|href|action|poster|srcset)\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|url\(\s*["']?\s*(?:https?:)?//|@import\b"""
    r"""|\b(?:from|import)\s*\(?\s*["'](?:https?:)?//)""",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Text:
    """Plain text. Blank lines separate paragraphs; single newlines are kept as line breaks.

    Always escaped: `Text("<b>hi</b>")` shows the tags literally.
    """

    text: str


@dataclass(frozen=True)
class Table:
    """A bordered table of `rows` (dicts). `columns` picks and orders the columns;
    by default every key seen, in first-seen order. Floats are shown with 4 significant digits."""

    title: str
    rows: list[dict]
    columns: list[str] | None = None


@dataclass(frozen=True)
class Image:
    """A picture already on disk (normally a PNG from `lab.reports.plots`).

    Files inside the report folder are referenced where they are; files elsewhere
    are copied into `<out_dir>/assets/` so the folder stays movable as a whole.
    """

    path: str | Path
    caption: str = ""


@dataclass(frozen=True)
class Answers:
    """Model answers side by side, one row per prompt, e.g. columns
    `["question", "unsteered", "steered", "random control"]`. Long text wraps."""

    title: str
    rows: list[dict]
    columns: list[str]


@dataclass(frozen=True)
class Html:
    """Trusted markup inserted verbatim: only for `attention_html` / `token_projection_html` output.

    It is never escaped, so never build it from model or user text by hand.
    """

    html: str
    title: str = ""

    def __post_init__(self) -> None:
        # The classic mistake is passing a circuitsvis object or `str()` of one:
        # both give markup that loads its JavaScript from a CDN and fails offline.
        if not isinstance(self.html, str):
            raise TypeError(f"Html expects a str, got {type(self.html).__name__}; "
                            "for circuitsvis use reports.attention_html / token_projection_html")
        if match := _EXTERNAL_REF.search(self.html):
            raise ValueError(f"Html block references something outside the report ({match.group(0)!r}); "
                             "reports must work offline")


@dataclass(frozen=True)
class Panel:
    """Headline numbers as (label, value) cards. Panels are also lifted onto the index page."""

    title: str
    items: list[tuple[str, str]]


Block = Union[Text, Table, Image, Answers, Html, Panel]


@dataclass(frozen=True)
class Section:
    """One page of the report, written to `<out_dir>/<id>.html`.

    `id` becomes a file name and a link, so it is restricted to letters, digits,
    `-` and `_`, and `index` is reserved for the contents page.
    """

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _SECTION_ID.fullmatch(self.id) or self.id.casefold() == "index":
            raise ValueError(f"bad section id {self.id!r}: use letters, digits, '-' or '_' "
                             "(at most 64, not 'index')")
