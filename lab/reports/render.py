"""Rendering: sections of blocks -> an offline, escaped, atomically written HTML report."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np

from lab.reports.blocks import Answers, Block, Html, Image, Panel, Section, Table, Text



# --------------------------------------------------------------------------- writing


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section], summary_text: str,
                 index_blocks: Sequence[Block] = ()) -> Path:
    """Write `index.html`, one `<id>.html` per section and `report.json` into `out_dir`.

    The index shows the title, `summary_text`, `index_blocks` (what a reader must see at a
    glance: a headline table, the key figure, inline), every `Panel` found in the sections
    (the headline numbers) and a table of contents. Each section page stands alone
    and links back to the index. Returns the path of `index.html`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_unique_ids(sections)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    assets = _Assets(out)
    for i, section in enumerate(sections):
        prev_sec = sections[i - 1] if i > 0 else None
        next_sec = sections[i + 1] if i + 1 < len(sections) else None
        body = _section_body(section, title, prev_sec, next_sec, assets)
        trusted = [b.html for b in section.blocks if isinstance(b, Html)]
        _write_atomic(out / f"{section.id}.html", _page(f"{section.title} · {title}", body, trusted))
    _write_atomic(out / "report.json", json.dumps(_manifest(title, sections, generated, index_blocks), indent=2) + "\n")
    # Written last: an index on disk means every page it links to is complete.
    index = out / "index.html"
    trusted = [b.html for b in index_blocks if isinstance(b, Html)]
    _write_atomic(index, _page(title, _index_body(title, sections, summary_text, generated, index_blocks, assets),
                               trusted))
    return index


def _check_unique_ids(sections: Sequence[Section]) -> None:
    seen: set[str] = set()
    for s in sections:
        key = s.id.casefold()  # casefold: `Intro.html` and `intro.html` clash on macOS
        if key in seen:
            raise ValueError(f"duplicate section id {s.id!r}")
        seen.add(key)


def _manifest(title: str, sections: Sequence[Section], generated: str,
              index_blocks: Sequence[Block] = ()) -> dict[str, Any]:
    """The machine-readable outline of the report (what tests and tools read)."""
    return {
        "title": title,
        "generated": generated,
        "index": "index.html",
        "index_blocks": [type(b).__name__ for b in index_blocks],
        "sections": [{"id": s.id, "title": s.title, "page": f"{s.id}.html",
                      "blocks": [type(b).__name__ for b in s.blocks]} for s in sections],
    }


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a unique temporary sibling, then rename: readers see the old file or the new one."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Assets:
    """Turns image paths into links relative to the report folder, copying files in as needed."""

    def __init__(self, out: Path):
        self.out = out.resolve()

    def href(self, path: str | Path) -> str | None:
        """Relative URL for `path`, or None when the file does not exist."""
        src = Path(path).resolve()
        if not src.is_file():
            return None
        if src.is_relative_to(self.out):
            return quote(src.relative_to(self.out).as_posix())
        data = src.read_bytes()
        # Content-addressed name: two plots called `sweep.png` from different folders
        # cannot overwrite each other, and re-running a report does not duplicate files.
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", src.stem)[:60] or "image"
        name = f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{src.suffix.lower()}"
        dest = self.out / "assets" / name
        if not dest.exists():
            dest.parent.mkdir(exist_ok=True)
            _write_atomic(dest, data)
        return quote(f"assets/{name}")


# --------------------------------------------------------------------------- page layout


def _esc(value: Any) -> str:
    """HTML-escape anything (quotes too, so the result is safe inside attributes)."""
    return html.escape(str(value), quote=True)


_INLINE_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)


def _csp(trusted_html: Sequence[str]) -> str:
    """Content-Security-Policy for a page: no network at all, and only trusted scripts run.

    Scripts are allowed by hash, and only those found in the trusted `Html` blocks (never
    in the whole page), so markup that sneaks in through an escaping bug, a `<script>`
    or an `<img onerror=...>`, cannot execute. Inline styles stay allowed: our CSS and
    the widgets' style attributes need them, and they cannot run code.
    """
    hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
              for html_ in trusted_html for s in _INLINE_SCRIPT.findall(html_)]
    scripts = " ".join(hashes) if hashes else "'none'"
    return (f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
            "img-src 'self' file: data: blob:; base-uri 'none'; form-action 'none'")


_CSS = """
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6473; --line: #d5d9e0; --bg2: #f5f7fa; --accent: #2f5fa7; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.3em; margin: 1.6em 0 0.5em; border-bottom: 1px solid var(--line); padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
a { color: var(--accent); }
p { margin: 0.5em 0 0.8em; max-width: 80ch; }
.meta { color: var(--muted); font-size: 0.9em; }
nav.pager { display: flex; gap: 1.2em; flex-wrap: wrap; font-size: 0.92em; margin: 0.4em 0 1em; }
.scroll { overflow-x: auto; margin: 0.4em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--bg2); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.answers { width: 100%; table-layout: fixed; }
table.answers td { white-space: pre-wrap; overflow-wrap: anywhere; }
figure { margin: 1em 0 1.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 0.3em; }
img { max-width: 100%; }
.missing { border: 1px dashed #c0392b; color: #c0392b; padding: 0.8em; }
.panel { margin: 0.8em 0 1.2em; }
.panel h3 { margin: 0 0 0.4em; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; background: var(--bg2); padding: 8px 14px; min-width: 140px; }
.card .value { font-size: 1.4em; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.card .label { color: var(--muted); font-size: 0.85em; }
ol.toc li { margin: 0.25em 0; }
.html-block { margin: 0.6em 0 1.4em; overflow-x: auto; }
.empty { color: var(--muted); font-style: italic; }
"""


def _page(title: str, body: str, trusted_html: Sequence[str] = ()) -> str:
    """A complete HTML5 document with inline CSS and a no-network CSP.

    `trusted_html` are the `Html` blocks inside `body`: their scripts are the only ones allowed to run.
    """
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp(trusted_html)}\">\n"
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _index_body(title: str, sections: Sequence[Section], summary_text: str, generated: str,
                index_blocks: Sequence[Block] = (), assets: "_Assets | None" = None) -> str:
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p class=\"meta\">Generated {_esc(generated)} · {len(sections)} section(s)</p>",
             _render_text(Text(summary_text))]
    parts += [_render_block(b, assets) for b in index_blocks]
    headlines = [(s, b) for s in sections for b in s.blocks if isinstance(b, Panel)]
    if headlines:
        parts.append("<h2>Headlines</h2>")
        for s, panel in headlines:
            link = f"<a href=\"{_esc(s.id)}.html\">{_esc(s.title)}</a>"
            parts.append(_render_panel(panel, link))
    parts.append("<h2>Contents</h2>")
    if sections:
        items = "".join(f"<li><a href=\"{_esc(s.id)}.html\">{_esc(s.title)}</a> "
                        f"<span class=\"meta\">{_esc(_describe(s))}</span></li>" for s in sections)
        parts.append(f"<ol class=\"toc\">{items}</ol>")
    else:
        parts.append("<p class=\"empty\">No sections.</p>")
    return "\n".join(parts)


def _describe(section: Section) -> str:
    """'2 tables, 1 image' style summary of a section's blocks for the contents list."""
    names = {"Text": "text", "Table": "table", "Image": "image", "Answers": "answer table",
             "Html": "visualisation", "Panel": "panel"}
    counts: dict[str, int] = {}
    for b in section.blocks:
        key = names[type(b).__name__]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in counts.items() if k != "text")


def _section_body(section: Section, report_title: str, prev_sec: Section | None,
                  next_sec: Section | None, assets: _Assets) -> str:
    links = ["<a href=\"index.html\">← Back to index</a>"]
    if prev_sec:
        links.append(f"<a href=\"{_esc(prev_sec.id)}.html\">‹ {_esc(prev_sec.title)}</a>")
    if next_sec:
        links.append(f"<a href=\"{_esc(next_sec.id)}.html\">{_esc(next_sec.title)} ›</a>")
    nav = f"<nav class=\"pager\">{' '.join(links)}</nav>"
    blocks = [_render_block(b, assets) for b in section.blocks] or ["<p class=\"empty\">Empty section.</p>"]
    return "\n".join([nav, f"<p class=\"meta\">{_esc(report_title)}</p>", f"<h1>{_esc(section.title)}</h1>",
                      *blocks, nav])


# --------------------------------------------------------------------------- blocks → HTML


def _render_block(block: Block, assets: _Assets) -> str:
    match block:
        case Text():
            return _render_text(block)
        case Table():
            return _render_table(block)
        case Image():
            return _render_image(block, assets)
        case Answers():
            return _render_answers(block)
        case Html():
            heading = f"<h3>{_esc(block.title)}</h3>" if block.title else ""
            return f"{heading}<div class=\"html-block\">{block.html}</div>"
        case Panel():
            return _render_panel(block)
    raise TypeError(f"not a report block: {type(block).__name__}")


def _render_text(block: Text) -> str:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", str(block.text)) if p.strip()]
    return "\n".join(f"<p>{_esc(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)


def _fmt(value: Any) -> tuple[str, bool]:
    """Cell text and whether it is numeric (numbers are right-aligned)."""
    if value is None:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}", True
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    return str(value), False


def _cell(value: Any) -> str:
    text, numeric = _fmt(value)
    return f"<td class=\"num\">{_esc(text)}</td>" if numeric else f"<td>{_esc(text)}</td>"


def _grid(rows: list[dict], columns: list[str], css_class: str = "") -> str:
    cls = f" class=\"{css_class}\"" if css_class else ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<div class=\"scroll\"><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _render_table(block: Table) -> str:
    columns = list(block.columns) if block.columns is not None else list(
        dict.fromkeys(k for r in block.rows for k in r))
    heading = f"<h3>{_esc(block.title)}</h3>"
    if not block.rows:
        return heading + "<p class=\"empty\">No rows.</p>"
    return heading + _grid(block.rows, columns)


def _render_answers(block: Answers) -> str:
    heading = f"<h3>{_esc(block.title)}</h3>"
    if not block.rows:
        return heading + "<p class=\"empty\">No answers.</p>"
    # Answers are text, not numbers: keep them left-aligned and wrapping.
    rows = [{c: ("" if r.get(c) is None else str(r.get(c))) for c in block.columns} for r in block.rows]
    return heading + _grid(rows, list(block.columns), "answers")


def _render_image(block: Image, assets: _Assets) -> str:
    href = assets.href(block.path)
    caption = f"<figcaption>{_esc(block.caption)}</figcaption>" if block.caption else ""
    if href is None:
        # A missing plot should not cost the whole report: show it loudly instead.
        warnings.warn(f"report image not found: {block.path}", stacklevel=3)
        return f"<figure><div class=\"missing\">Image not found: {_esc(Path(block.path).name)}</div>{caption}</figure>"
    return f"<figure><img src=\"{_esc(href)}\" alt=\"{_esc(block.caption)}\">{caption}</figure>"


def _render_panel(block: Panel, link: str = "") -> str:
    cards = "".join(f"<div class=\"card\"><div class=\"value\">{_esc(_fmt(v)[0])}</div>"
                    f"<div class=\"label\">{_esc(k)}</div></div>" for k, v in block.items)
    suffix = f" <span class=\"meta\">({link})</span>" if link else ""
    return f"<div class=\"panel\"><h3>{_esc(block.title)}{suffix}</h3><div class=\"cards\">{cards}</div></div>"


# --------------------------------------------------------------------------- circuitsvis
