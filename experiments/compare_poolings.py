"""Pooling comparison: last token vs mean over prompt vs mean over response vs first-k response tokens.

    emlab compare-poolings --contrast medical_answers
    emlab compare-poolings --contrast refusal      # prompt-only: last vs mean_prompt

For answer contrasts the last *prompt* token precedes the answer, so it cannot tell paired
aligned/misaligned answers apart: its AUROC ~0.5 is the built-in sanity check
(`lab.directions.pooling`).
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.core.io import write_result
from lab.directions.pooling import PoolingConfig, PoolingResult, compare_poolings
from lab.reports.figures import write_figures


def run(cfg: PoolingConfig) -> PoolingResult:
    result = compare_poolings(cfg)
    write_figures(result)
    show(result)
    write_result(result)
    return result


main = cli(PoolingConfig, run)


if __name__ == "__main__":
    main()
