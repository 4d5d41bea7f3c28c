"""circuitsvis widgets as trusted, self-contained HTML (no CDN): attention patterns and
per-token projections."""

from __future__ import annotations

import html
import re

import numpy as np


def attention_html(str_tokens: list[str], pattern: np.ndarray, head_names: list[str] | None = None) -> str:
    """Offline circuitsvis `attention_heads` widget for one prompt; wrap it in `Html`.

    `pattern` has shape (heads, query, key) with query == key == len(str_tokens),
    e.g. `cache["pattern", layer][batch]` from TransformerLens. Tokens are passed as
    plain text: AttentionHeads draws them on a canvas (chart.js), never as HTML.
    """
    from circuitsvis.attention import attention_heads  # lazy: circuitsvis imports torch

    pattern = np.asarray(pattern, dtype=np.float64)
    n = len(str_tokens)
    if pattern.ndim != 3 or pattern.shape[1:] != (n, n):
        raise ValueError(f"pattern must have shape (heads, {n}, {n}) for {n} tokens, got {pattern.shape}")
    if head_names is not None and len(head_names) != pattern.shape[0]:
        raise ValueError(f"{len(head_names)} head names for {pattern.shape[0]} heads")
    # 4 decimals is far below what a colour scale shows, and keeps pages small.
    rendered = attention_heads(attention=pattern.round(4), tokens=[str(t) for t in str_tokens],
                               attention_head_names=None if head_names is None else [str(h) for h in head_names])
    return _offline_html(rendered.local_src)


def token_projection_html(str_tokens: list[str], values: list[float]) -> str:
    """Offline circuitsvis `colored_tokens` widget: each token shaded by its value
    (e.g. the projection of its residual stream onto a direction); wrap it in `Html`."""
    from circuitsvis.tokens import colored_tokens  # lazy: circuitsvis imports torch

    vals = np.asarray(values, dtype=np.float64).reshape(-1).round(4)
    if len(vals) != len(str_tokens):
        raise ValueError(f"{len(vals)} values for {len(str_tokens)} tokens")
    # ColoredTokens puts each token into the page with innerHTML (React's
    # dangerouslySetInnerHTML), so a token like `<img/src="x"/onerror="...">` would run.
    # Escaping makes the browser display exactly the token text instead.
    tokens = [html.escape(str(t), quote=True) for t in str_tokens]
    rendered = colored_tokens(tokens=tokens, values=vals)
    return _offline_html(rendered.local_src)


# circuitsvis' `local_src` is: <div id="circuits-vis-…" …/> <script …> BUNDLE  CircuitsVis.render("id", CircuitsVis.X, PROPS) </script>
_CV_HEAD = re.compile(r'\s*<div id="(circuits-vis-[0-9a-f-]+)"[^>]*>\s*<script[^>]*>')
_CV_CALL = "CircuitsVis.render("
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)


def _offline_html(local_src: str) -> str:
    """Rebuild circuitsvis' `local_src` as safe, valid, offline markup.

    Why not use `local_src` as is:
    * its props are raw `json.dumps` output inside a <script>, so a token such as
      `</script><script>alert(1)</script>` ends the script early and runs the attacker's;
    * its `<div …/>` is not a valid HTML5 element (the div would swallow what follows);
    * the bundle mentions `http://` URLs (XML namespaces, docs links) and a source map.
    """
    head = _CV_HEAD.match(local_src)
    end = local_src.rfind("</script>")
    if head is None or end < head.end():
        raise RuntimeError("unrecognised circuitsvis output (has circuitsvis changed?)")
    bundle, sep, call = local_src[head.end():end].rpartition(_CV_CALL)
    if not sep:
        raise RuntimeError("unrecognised circuitsvis output: no CircuitsVis.render call")
    js = _SOURCE_MAP.sub("", bundle) + sep + _escape_json_for_script(call)
    return (f"<div class=\"emlab-cv\" id=\"{head.group(1)}\"></div>\n"
            f"<script type=\"module\">\n{_neutralise_script(js)}\n</script>")


def _escape_json_for_script(text: str) -> str:
    """Replace <, > and & by JSON \\u escapes: same JavaScript strings, but nothing the
    HTML parser can see as a tag. In JSON these characters only occur inside strings."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _neutralise_script(js: str) -> str:
    """Make inline JavaScript safe to embed in HTML without changing what it does.

    Inside a <script>, the HTML parser only cares about `</script` and `<!--`; and a
    literal `//` can only occur in JS strings, template literals, comments or (as `\\/`)
    regexes, where `\\/` means the same as `/`. So:
    `</` -> `<\\/` (no early end of the script), `<!--` -> `\\x3C!--` (no comment-state
    trickery), `http(s)://` -> `http(s):\\/\\/` (no URL-shaped text in the page).
    """
    js = js.replace("<!--", "\\x3C!--").replace("</", "<\\/")
    return re.sub(r"(https?:)//", r"\1\\/\\/", js, flags=re.IGNORECASE)
