"""The benchmark's ratio table: fastest step and largest RSS per variant over rounds, ratios from
those, peer beside the recipe."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import benchmark  # noqa: E402

GIB = 1024**3


def _row(variant: str, s_per_step: float, rss_gib: float, precision: str = "fp32") -> dict:
    return dict(variant=variant, px=512, precision=precision, s_per_step=s_per_step,
                peak_rss=rss_gib * GIB, setup_s=1.0, optimizer_bytes=None)  # fmt: skip


def test_ratio_table_uses_each_variants_best_round():
    rows = [
        _row("limit", 9.0, 5.8), _row("ours", 10.0, 5.9), _row("baseline", 14.0, 7.0),
        _row("peer", 16.2, 7.5),
        _row("limit", 8.0, 5.9), _row("ours", 8.8, 5.8), _row("baseline", 15.0, 7.1),
        _row("peer", 15.0, 7.4),
        _row("ours", 4.4, 3.3, "bf16"),
    ]  # fmt: skip
    table = benchmark.format_tables(rows, "meta").splitlines()
    fp32 = next(line for line in table if line.startswith("| 512 | fp32 | 1.10 |"))
    # ours 8.8 / limit 8.0; recipe 14.0 / 8.8; RSS 5.9 / 7.1; peer 15.0 / 8.8; RSS 5.9 / 7.5
    assert fp32 == "| 512 | fp32 | 1.10 | 1.59 | 0.83 | 1.70 | 0.79 |  |"
    bf16 = [line for line in table if line.startswith("| 512 | bf16 |")][-1]  # the ratio row
    assert bf16 == "| 512 | bf16 | n/a | n/a | n/a | n/a | n/a | 2.00 |"  # ours fp32 8.8 / bf16 4.4
