"""Shared reporting of the weigh-check benchmarks (bench/test_peritem.py,
bench/test_bagging.py)."""

from __future__ import annotations


def by_basket_size(det, n_lines, first, oracle) -> str:
    """Named-first against the Bayes ceiling per basket size band, for the notes of
    bench/test_peritem.py and bench/test_bagging.py."""
    by = []
    for lo, hi in ((1, 5), (6, 10), (11, 15), (16, 20), (21, 25)):
        k = det & (n_lines >= lo) & (n_lines <= hi)
        if k.any():
            by.append(f"{lo}-{hi} lines {first[k].mean():.3f}/{oracle[k].mean():.3f}")
    return "    named first by basket size (lanecore/ceiling): " + "; ".join(by)
