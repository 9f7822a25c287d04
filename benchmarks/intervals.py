"""Sample statistics the evidence protocol (benchmarks/PROTOCOL.md) reports: sample std, the t-interval of a mean
over runs, the Wilson interval of one success rate."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def sample_std(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def t_interval(values, confidence: float = 0.95) -> list[float]:
    """The t-interval of the mean of ``values`` (Student's t, n - 1 degrees of freedom); NaN for fewer than 2."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return [float("nan"), float("nan")]
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sample_std(values) / math.sqrt(n)
    return [float(values.mean() - half), float(values.mean() + half)]


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> list[float]:
    """The Wilson score interval of a success rate ``successes / trials`` (good at rates near 0 and 1)."""
    if trials == 0:
        return [float("nan"), float("nan")]
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return [max(0.0, centre - half), min(1.0, centre + half)]
