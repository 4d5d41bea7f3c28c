"""The report writer: escaping, links, offline-ness, images, and a real headless-browser check."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from lab import reports as R

XSS = "<script>alert(1)</script>"
BAD_TOKEN = "</script><script>alert(1)</script>"
IMG_TOKEN = '<img/src="x"/onerror="alert(3)">'  # runs if a widget inserts tokens as HTML
CHROMIUM = Path("/usr/bin/chromium")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _png(path: Path) -> Path:
    """A small real PNG made with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    ax.set_title("tiny plot")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def _hostile_sections(tmp_path: Path) -> list[R.Section]:
    """Every block type, with the XSS payload in every field that is not trusted HTML."""
    return [
        R.Section("summary", f"Summary {XSS}", [
            R.Panel(f"Headline {XSS}", [(f"rate {XSS}", f"{XSS}"), ("n", "12")]),
            R.Text(f"First paragraph {XSS}\nsecond line.\n\nSecond paragraph."),
        ]),
        R.Section("tables", "Tables", [
            R.Table(f"Scores {XSS}", [{"name": XSS, "score": 0.123456, "n": 3}, {f"col {XSS}": "x"}]),
            R.Answers(f"Answers {XSS}", [{"question": XSS, "unsteered": "fine " * 80, "steered": XSS}],
                      ["question", "unsteered", "steered", f"random {XSS}"]),
        ]),
        R.Section("figures", "Figures", [
            R.Image(_png(tmp_path / "elsewhere" / "plot.png"), f"A plot {XSS}"),
            R.Html("<b>trusted</b>", f"Widget {XSS}"),
        ]),
    ]


def _written(out: Path) -> dict[str, str]:
    """Every text file of a report, by path relative to the report folder."""
    return {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*")
            if p.is_file() and p.suffix in {".html", ".json"}}


def _links(page: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', page)


class _Balance(HTMLParser):
    """Collects tag-nesting errors: every non-void element must be closed, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        self.scripts += tag == "script"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag not in VOID:
            self.errors.append(f"self-closed <{tag}/>")  # not valid HTML5 on non-void elements

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> while open: {self.stack[-3:]}")
        else:
            self.stack.pop()


def _check_html5(page: str) -> _Balance:
    assert page.startswith("<!DOCTYPE html>\n<html lang=\"en\">")
    assert '<meta charset="utf-8">' in page and "<title>" in page
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


# --------------------------------------------------------------------------- unit tests


def test_every_block_escapes_user_text(tmp_path):
    out = tmp_path / "report"
    R.write_report(out, f"Report {XSS}", _hostile_sections(tmp_path), f"Summary {XSS}")
    files = _written(out)
    assert set(files) >= {"index.html", "summary.html", "tables.html", "figures.html", "report.json"}
    for name, text in files.items():
        if name.endswith(".html"):
            assert "<script" not in text.lower(), name  # no widgets here, so no script at all
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, name
    # spot checks that each block type rendered its (escaped) fields
    assert "random &lt;script&gt;" in files["tables.html"]  # Answers column header
    assert "Scores &lt;script&gt;" in files["tables.html"]  # Table title
    assert "col &lt;script&gt;" in files["tables.html"]  # Table column from a later row
    assert 'alt="A plot &lt;script&gt;' in files["figures.html"]  # Image caption in an attribute
    assert "<b>trusted</b>" in files["figures.html"]  # Html is the one verbatim block
    assert "rate &lt;script&gt;" in files["index.html"]  # Panel lifted onto the index


def test_text_paragraphs_and_table_formatting(tmp_path):
    out = tmp_path / "r"
    R.write_report(out, "T", [R.Section("s", "S", [
        R.Text("one\ntwo\n\n  \nthree"),
        R.Table("t", [{"a": 0.123456, "b": 7, "c": None, "d": True}], columns=["d", "a", "b", "c"]),
    ])], "")
    page = (out / "s.html").read_text()
    assert "<p>one<br>two</p>\n<p>three</p>" in page
    assert "<th>d</th><th>a</th><th>b</th><th>c</th>" in page
    assert '<td>True</td><td class="num">0.1235</td><td class="num">7</td><td></td>' in page


def test_index_links_every_section_and_pages_link_back(tmp_path):
    out = tmp_path / "report"
    sections = _hostile_sections(tmp_path)
    index = R.write_report(out, "Report", sections, "Summary")
    assert index == out / "index.html"
    index_links = _links(index.read_text())
    for s in sections:
        assert f"{s.id}.html" in index_links
        page = (out / f"{s.id}.html").read_text()
        assert "index.html" in _links(page)
    for page in out.glob("*.html"):
        for href in _links(page.read_text()):
            assert (out / href).is_file(), f"{page.name} links to missing {href}"


def test_pages_are_well_formed_html5(tmp_path):
    out = tmp_path / "report"
    sections = _hostile_sections(tmp_path) + [R.Section("vis", "Vis", [
        R.Html(R.attention_html(["a", BAD_TOKEN, "c"], np.full((2, 3, 3), 1 / 3)), "attention"),
        R.Html(R.token_projection_html(["a", BAD_TOKEN, "c"], [0.5, -1.0, 2.0]), "projection"),
    ])]
    R.write_report(out, "Report", sections, "Summary")
    for page in out.glob("*.html"):
        _check_html5(page.read_text())


def test_no_external_references_anywhere(tmp_path):
    out = tmp_path / "report"
    sections = _hostile_sections(tmp_path) + [R.Section("vis", "Vis", [
        R.Html(R.attention_html(["a", "b"], np.eye(2)[None]), "attention"),
        R.Html(R.token_projection_html(["a", "b"], [1.0, -1.0]), "projection"),
    ])]
    R.write_report(out, "Report", sections, "Summary")
    for name, text in _written(out).items():
        for needle in ("http://", "https://", "//cdn", "unpkg", "sourcemappingurl", "@import"):
            assert needle not in text.lower(), f"{needle} in {name}"
        assert not re.search(r"""url\(\s*["']?\s*(https?:)?//""", text, re.IGNORECASE), name  # CSS url(//host)


def test_report_json_lists_sections(tmp_path):
    out = tmp_path / "report"
    sections = _hostile_sections(tmp_path)
    R.write_report(out, "Report", sections, "Summary")
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["index"] == "index.html"
    assert [(s["id"], s["title"], s["page"]) for s in manifest["sections"]] == [
        (s.id, s.title, f"{s.id}.html") for s in sections]
    assert manifest["sections"][1]["blocks"] == ["Table", "Answers"]


def test_images_are_copied_or_linked_in_place(tmp_path):
    out = tmp_path / "report"
    outside = _png(tmp_path / "plots" / "sweep.png")
    inside = _png(out / "plots" / "inside.png")
    R.write_report(out, "R", [R.Section("figs", "Figs", [R.Image(outside, "outside"), R.Image(str(inside), "inside")])],
                   "")
    srcs = re.findall(r'<img src="([^"]+)"', (out / "figs.html").read_text())
    assert srcs[1] == "plots/inside.png"  # already in the report: referenced, not copied
    assert srcs[0].startswith("assets/sweep-") and srcs[0].endswith(".png")
    assert (out / srcs[0]).read_bytes() == outside.read_bytes()
    # re-writing the report reuses the same content-addressed asset
    R.write_report(out, "R", [R.Section("figs", "Figs", [R.Image(outside, "outside")])], "")
    assert len(list((out / "assets").iterdir())) == 1


def test_index_shows_headline_table_and_key_figure_inline(tmp_path):
    out = tmp_path / "report"
    figure = _png(tmp_path / "plots" / "key.png")
    blocks = [R.Table(f"Headline {XSS}", [{"measurement": f"EM rate {XSS}", "value [95% CI]": "0.12 [0.05, 0.20]"}]),
              R.Image(figure, f"key figure {XSS}")]
    R.write_report(out, "R", _hostile_sections(tmp_path), "Summary", index_blocks=blocks)
    index = (out / "index.html").read_text()
    _check_html5(index)
    assert "Headline &lt;script&gt;" in index and "EM rate &lt;script&gt;" in index and "0.12 [0.05, 0.20]" in index
    src = re.findall(r'<img src="([^"]+)"', index)
    assert len(src) == 1 and (out / src[0]).read_bytes() == figure.read_bytes()  # inline, not a link
    assert index.index("Headline &lt;") < index.index("<h2>Contents</h2>")  # above the contents
    assert "<script" not in index.lower()
    assert json.loads((out / "report.json").read_text())["index_blocks"] == ["Table", "Image"]


def test_missing_image_is_shown_not_fatal(tmp_path):
    out = tmp_path / "report"
    with pytest.warns(UserWarning, match="image not found"):
        R.write_report(out, "R", [R.Section("figs", "Figs", [R.Image(tmp_path / "nope.png", "gone")])], "")
    page = (out / "figs.html").read_text()
    assert "Image not found: nope.png" in page and "<img" not in page


def test_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    out = tmp_path / "report"
    for _ in range(2):  # second run overwrites in place
        R.write_report(out, "R", _hostile_sections(tmp_path), "s")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert oct((out / "index.html").stat().st_mode & 0o777) == "0o644"


def test_bad_inputs_are_rejected(tmp_path):
    for bad in ("index", "Index", "a/b", "../x", "", "x.html", "a b"):
        with pytest.raises(ValueError):
            R.Section(bad, "t")
    with pytest.raises(ValueError, match="duplicate"):
        R.write_report(tmp_path, "R", [R.Section("a", "A"), R.Section("A", "B")], "")
    with pytest.raises(ValueError, match="shape"):
        R.attention_html(["a", "b"], np.zeros((1, 3, 3)))
    with pytest.raises(ValueError):
        R.token_projection_html(["a", "b"], [1.0])


def test_html_block_refuses_cdn_markup():
    from circuitsvis.tokens import colored_tokens

    rendered = colored_tokens(["a", "b"], np.array([1.0, 2.0]))
    with pytest.raises(TypeError):
        R.Html(rendered)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offline"):
        R.Html(str(rendered))  # str() is circuitsvis' CDN version
    for bad in ('<img src="https://x.org/a.png">', "<link href='//cdn.x/y.css'>", "<style>@import 'a.css'</style>"):
        with pytest.raises(ValueError):
            R.Html(bad)


def test_token_widget_gets_html_escaped_tokens():
    # ColoredTokens inserts tokens with innerHTML, so they must arrive HTML-escaped
    # (and then JSON-escaped for the <script>): `<img` -> `&lt;img` -> `\u0026lt;img`.
    html = R.token_projection_html(["a b", IMG_TOKEN], [1.0, 2.0])
    assert '"tokens": ["a b", "\\u0026lt;img/src=\\u0026quot;x' in html
    # AttentionHeads draws tokens on a canvas, so they stay plain text (JSON-escaped only).
    html = R.attention_html(["a", IMG_TOKEN], np.full((1, 2, 2), 0.5))
    assert '"\\u003cimg/src=\\"x\\"/onerror=\\"alert(3)\\"\\u003e"' in html


def test_csp_allows_only_the_page_scripts_by_hash(tmp_path):
    import base64
    import hashlib

    out = tmp_path / "r"
    R.write_report(out, "R", [R.Section("vis", "Vis", [R.Html(R.token_projection_html(["a"], [1.0]))]),
                              R.Section("plain", "Plain", [R.Text("hi")])], "")
    for name, n_scripts in (("vis.html", 1), ("plain.html", 0), ("index.html", 0)):
        page = (out / name).read_text()
        csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
        assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, re.DOTALL)
        assert len(scripts) == n_scripts
        for body in scripts:
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
        if not scripts:
            assert "script-src 'none'" in csp


def test_circuitsvis_tokens_cannot_break_out_of_their_script():
    from circuitsvis.tokens import colored_tokens

    tokens = ["ok", BAD_TOKEN, "<!--<script>", "</SCRIPT >"]
    # The threat is real: circuitsvis' own local_src embeds the token verbatim in its <script>.
    assert BAD_TOKEN in colored_tokens(tokens, np.zeros(4)).local_src
    for html in (R.attention_html(tokens, np.random.default_rng(0).random((2, 4, 4))),
                 R.token_projection_html(tokens, [0.0, 1.0, -1.0, 2.0])):
        assert "alert(1)" in html  # the token is still there, as data...
        assert "<script>alert" not in html and "</script><script>" not in html  # ...but cannot end the script
        assert "<!--" not in html and len(re.findall(r"</script", html, re.IGNORECASE)) == 1
        checker = _Balance()
        checker.feed(html)
        checker.close()
        assert checker.scripts == 1 and not checker.errors and not checker.stack
        assert html.rstrip().endswith("</script>")


# --------------------------------------------------------------------------- browser test


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "python package 'playwright' not installed (pip install playwright)"
    return None


BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file://", "data:", "blob:", "about:")


@pytest.mark.browser
def test_report_in_headless_chromium(tmp_path):
    """Open every page over file:// in a real browser: no network, no errors, no alert, widgets drawn."""
    missing = _browser_missing()
    if missing:
        pytest.skip(f"browser test needs headless Chromium: {missing}")
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    tokens = ["<bos>", "The", BAD_TOKEN, IMG_TOKEN, " says"]
    pattern = rng.random((2, 5, 5))
    pattern = np.tril(pattern) / np.tril(pattern).sum(-1, keepdims=True)
    out = tmp_path / "report"
    R.write_report(out, "Browser check", [
        R.Section("text", "Text and tables", [
            R.Panel("Headline", [("misaligned", "31%"), ("random", "4%")]),
            R.Text(f"Hello {XSS}\n\nSecond paragraph."),
            R.Table("Scores", [{"name": XSS, "score": 0.5}]),
            R.Answers("Answers", [{"question": XSS, "unsteered": "calm " * 60, "steered": XSS, "random control": "ok"}],
                      ["question", "unsteered", "steered", "random control"]),
        ]),
        R.Section("figures", "Figures", [R.Image(_png(tmp_path / "plot.png"), "A plot")]),
        R.Section("vis", "Visualisations", [
            R.Html(R.attention_html(tokens, pattern, ["L0H0", "L0H1"]), "Attention"),
            R.Html(R.token_projection_html(tokens, [0.1, -0.5, 2.0, 1.0, -1.5]), "Projection"),
        ]),
    ], f"Summary {XSS}")

    requests: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        try:
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            page.goto((out / "index.html").as_uri(), wait_until="load")
            assert page.title() == "Browser check"
            assert XSS in page.inner_text("body")  # shown as text, not run
            shot = Path(os.environ.get("EMLAB_SCREENSHOT") or tmp_path / "index.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            hrefs = page.eval_on_selector_all("ol.toc a", "els => els.map(e => e.getAttribute('href'))")
            assert hrefs == ["text.html", "figures.html", "vis.html"]

            for href in hrefs:
                page.goto((out / href).as_uri(), wait_until="load")
                assert page.locator("a[href='index.html']").count() >= 1
                if href == "figures.html":  # the image decoded (naturalWidth is 0 for a broken image)
                    assert page.eval_on_selector("figure img", "i => i.complete && i.naturalWidth") > 0
                if href == "vis.html":
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('.emlab-cv')]"
                        ".every(d => d.querySelectorAll('*').length > 0)", timeout=20_000)
                    assert page.locator(".emlab-cv").count() == 2
                    assert page.evaluate("document.querySelectorAll('.emlab-cv *').length") > 10
                    # the malicious tokens are displayed literally by the token widget
                    shown = page.inner_text(".emlab-cv >> nth=1").replace("\xa0", " ")
                    assert BAD_TOKEN in shown and IMG_TOKEN in shown and "<bos>" in shown
                    page.wait_for_timeout(300)  # let any late errors surface
        finally:
            context.close()

    offline = [u for u in requests if not u.startswith(LOCAL_SCHEMES)]
    assert not offline, f"network requests: {offline}"
    assert not failed, failed
    assert not errors, errors
    assert not dialogs, f"a dialog opened: {dialogs}"
