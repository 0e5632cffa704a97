"""``drrl report``: a comparison's report rebuilt from its saved rows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> int:
    from experiments.compare import rebuild_report

    print(rebuild_report(Path(args.folder), model_metrics=args.model_metrics).read_text())
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl report`` on the CLI's subparsers."""
    p = sub.add_parser("report", help="rebuild a comparison's report.md from its rows.json and compare.json")
    p.add_argument("folder", help="a drrl compare output folder (with rows.json and compare.json)")
    p.add_argument(
        "--model-metrics",
        action="store_true",
        help="re-measure end-of-model fidelity, retrieval and attention latency from the saved ranks",
    )
    p.set_defaults(func=run)
