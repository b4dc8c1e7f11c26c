"""Confidence intervals of a sample's statistics: what plots draw and adaptive sweeps stop on."""

from __future__ import annotations

import math

import numpy as np


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean and the bounds of its confidence interval (Student's t; NaN below two values)."""
    from scipy import stats

    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def quantile_interval(values: np.ndarray, q: float, confidence: float = 0.95) -> tuple[float, float, float]:
    """A quantile and its distribution-free interval: order statistics chosen by the binomial."""
    from scipy import stats

    ordered = np.sort(values)
    n = len(ordered)
    low_rank = int(stats.binom.ppf((1 - confidence) / 2, n, q))
    high_rank = int(stats.binom.ppf((1 + confidence) / 2, n, q))
    return (float(np.quantile(ordered, q)), float(ordered[max(0, low_rank - 1)]),
            float(ordered[min(n - 1, high_rank)]))
