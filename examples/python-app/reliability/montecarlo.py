"""Entry points of the reliability application.

A tie rod of cross-section `area_mm2` carries a load that is normally distributed around
`load_mean_kn` (coefficient of variation `load_cov`); its yield strength is lognormal around
`strength_mean_mpa` (`strength_cov`). It fails when the stress exceeds the strength. The
probability of failure is small, so many samples are needed: `failure_probability` splits them
into chunks and runs the chunks as Dask tasks across the cluster through the job's own client
(orchestrator.get_client()), then combines them with a 95 % confidence interval.
"""

from __future__ import annotations

import math

import numpy as np


def failures_in_chunk(chunk: int, samples: int, seed: int, area_mm2: float, load_mean_kn: float,
                      load_cov: float, strength_mean_mpa: float, strength_cov: float) -> int:
    """One task: how many of `samples` draws fail (an independent random stream per chunk)."""
    rng = np.random.default_rng([seed, chunk])
    load_n = rng.normal(load_mean_kn * 1e3, load_cov * load_mean_kn * 1e3, samples)
    sigma = math.sqrt(math.log(1 + strength_cov**2))
    strength_mpa = rng.lognormal(math.log(strength_mean_mpa) - sigma**2 / 2, sigma, samples)
    return int(np.count_nonzero(load_n / area_mm2 > strength_mpa))


def failure_probability(samples: int = 2_000_000, chunks: int = 20, seed: int = 1, area_mm2: float = 400.0,
                        load_mean_kn: float = 80.0, load_cov: float = 0.15, strength_mean_mpa: float = 355.0,
                        strength_cov: float = 0.08) -> dict:
    from orchestrator import get_client

    client = get_client()
    per_chunk = samples // chunks
    futures = client.map(failures_in_chunk, range(chunks), samples=per_chunk, seed=seed, area_mm2=area_mm2,
                         load_mean_kn=load_mean_kn, load_cov=load_cov, strength_mean_mpa=strength_mean_mpa,
                         strength_cov=strength_cov)
    failed = sum(client.gather(futures))
    drawn = per_chunk * chunks
    p = failed / drawn
    half_width = 1.96 * math.sqrt(max(p * (1 - p), 1 / drawn) / drawn)
    print(f"{failed} failures in {drawn} samples over {chunks} tasks")
    return {"probability": p, "ci95_low": max(0.0, p - half_width), "ci95_high": p + half_width,
            "samples": drawn, "failures": failed, "tasks": chunks}


def design_stress(area_mm2: float = 400.0, load_mean_kn: float = 80.0) -> dict:
    """A quick deterministic check, no cluster: the stress under the mean load."""
    return {"stress_mpa": load_mean_kn * 1e3 / area_mm2}
