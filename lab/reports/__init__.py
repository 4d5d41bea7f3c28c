"""Offline HTML reports: an index page plus one self-contained page per section.

This module only *renders*: callers hand it blocks (text, tables, images, answer
comparisons, headline numbers, circuitsvis widgets) and it writes HTML. It knows
nothing about how the numbers were computed. Beside it: `lab.reports.plots` (the
matplotlib figures, PNG) and `lab.reports.diffing` (the model-diffing section, built from
the diffing verbs' summaries; `python -m lab.reports.diffing OUT_DIR`).

Three guarantees shape the code:

* **Offline.** Every page inlines its CSS and JavaScript and references nothing
  outside the report folder: no CDN, no web fonts, no remote images. A
  Content-Security-Policy meta tag additionally forbids network loads, so even
  a future regression in a bundled widget cannot phone home.
* **Escaped.** Everything that came from a model or a user (answers, tokens,
  titles, table cells) is HTML-escaped. The one exception is `Html`, reserved
  for trusted markup produced by `attention_html` / `token_projection_html`.
* **Atomic.** Each file is written under a temporary name and renamed into
  place, and `index.html` is written last, so a crash never leaves a report
  whose index points at half-written pages.

Example::

    from lab import reports as R
    sec = R.Section("steering", "Steering", [
        R.Panel("Headline", [("misaligned (steered)", "31%"), ("misaligned (random)", "4%")]),
        R.Text("Steering along the direction raises misalignment.\\n\\nRandom directions do not."),
        R.Image("out/plots/sweep.png", "Misalignment against steering strength"),
    ])
    R.write_report("out/report", "Emergent misalignment study", [sec], "One-paragraph summary.")
"""


from lab.reports.blocks import Answers, Block, Html, Image, Panel, Section, Table, Text
from lab.reports.render import write_report
from lab.reports.widgets import attention_html, token_projection_html

__all__ = [
    "Text", "Table", "Image", "Answers", "Html", "Panel", "Block", "Section",
    "write_report", "attention_html", "token_projection_html",
]
