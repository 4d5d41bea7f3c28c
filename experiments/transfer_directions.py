"""Cross-model direction transfer and direction similarity across models / fine-tunes.

    emlab transfer-directions --contrast refusal \\
        --organisms medical=runs/medical/adapter financial=runs/financial/adapter

Every model's direction scored on every model's held-out split, and the cosines of their
directions by layer (`lab.directions.transfer`).
"""

from __future__ import annotations

from experiments.common import cli, show
from lab.core.io import write_result
from lab.directions.transfer import TransferConfig, TransferResult, transfer_directions
from lab.reports.figures import write_figures


def run(cfg: TransferConfig) -> TransferResult:
    result = transfer_directions(cfg)
    write_figures(result)
    show(result)
    write_result(result)
    return result


main = cli(TransferConfig, run)


if __name__ == "__main__":
    main()
