"""Statistics of the benchmark harness (``bench/harness.py``): median and spread of repeated
measurements, ratios paired by round, and the interleaved order of the chunks."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class Spread:
    """Median and spread of repeated measurements."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr_relative(self) -> float:
        """Interquartile range over the median (0 when the median is 0)."""
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def format(self, fmt: str = ',.0f', suffix: str = '') -> str:
        """``median (q1-q3)``, e.g. ``2,829 (2,700-2,910)``."""
        if self.n < 2:
            return f'{self.median:{fmt}}{suffix}'
        return f'{self.median:{fmt}}{suffix} ({self.q1:{fmt}}-{self.q3:{fmt}})'


def spread(values: Iterable[float]) -> Spread:
    """Median, quartiles (inclusive method: interpolated between the samples), min and max."""
    data = sorted(float(v) for v in values)
    if not data:
        raise ValueError('spread() of no values')
    if len(data) == 1:
        q1 = q3 = data[0]
    else:
        q1, _, q3 = statistics.quantiles(data, n=4, method='inclusive')
    return Spread(statistics.median(data), q1, q3, data[0], data[-1], len(data))


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios of two configurations measured in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError(f'{len(numerator)} vs {len(denominator)} rounds: ratios need pairs')
    return [a / b for a, b in zip(numerator, denominator)]


def interleaved_order(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the chunks: every name once per round, forward then reverse.

    ``[A, B, C]`` over 4 rounds: A B C, C B A, A B C, C B A. Reversal cancels a linear trend
    of the load between any two configurations over each pair of rounds, and no configuration
    runs twice in a row except at a round boundary.
    """
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]
