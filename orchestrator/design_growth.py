"""Designs that grow: the next rows of a sampled design.

Monte Carlo, Sobol and Saltelli designs continue their own sequence from the sweep's seed, so a
sweep of N samples extended by M is exactly the sweep `samples = N + M` would have made. A
Latin hypercube of N + M points does not contain one of N, so its extension is an independent
hypercube of M points with a seed derived from the sweep's; every extension is recorded
(lineage) so the table can always be made again.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator import doe
from orchestrator.errors import ValidationFailed

GROWABLE = ("monte_carlo", "latin_hypercube", "sobol", "saltelli")


@dataclass
class Growth:
    """The rows an extension adds, and how they were made."""

    table: doe.RunTable
    samples: int  # design samples added (base points, for Saltelli)
    lineage: dict[str, Any]


def extension_seed(seed: int, number: int) -> int:
    """The seed of a sweep's `number`-th extension where its sampler cannot continue."""
    digest = hashlib.sha256(f"{seed}/{number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def grow(variables: list[doe.Variable], design: doe.Sampled, seed: int, samples_so_far: int, adding: int,
         first_index: int, number: int) -> Growth:
    """`adding` more samples of `design` after `samples_so_far`; runs numbered from `first_index`."""
    if design.type not in GROWABLE:
        raise ValidationFailed(f"a {design.type} design cannot grow", {"design": f"{design.type} cannot be extended"})
    dimensions = len(variables)
    unit, lineage = _unit_rows(design.type, dimensions, seed, samples_so_far, adding, number)
    table = doe.RunTable([v.name for v in variables], doe.rows_from_unit(variables, unit), seed=seed,
                         first_index=first_index)
    return Growth(table, adding, {"number": number, "samples": adding, "first_index": first_index,
                                  "runs": len(table.rows), **lineage})


def _unit_rows(kind: str, dimensions: int, seed: int, done: int, adding: int, number: int
               ) -> tuple[np.ndarray, dict[str, Any]]:
    if kind == "monte_carlo":
        rng = np.random.default_rng(seed)
        rng.bit_generator.advance(done * dimensions)  # one draw per value: skip the rows made
        return rng.random((adding, dimensions)), {"continues": "seed", "after_samples": done}
    if kind == "sobol":
        from scipy.stats import qmc

        engine = qmc.Sobol(d=dimensions, scramble=True, rng=np.random.default_rng(seed))
        with warnings.catch_warnings():  # Sobol prefers powers of two; any count is still valid
            warnings.simplefilter("ignore", UserWarning)
            engine.fast_forward(done)
            return engine.random(adding), {"continues": "seed", "after_samples": done}
    if kind == "saltelli":
        return doe.saltelli_cube(adding, dimensions, seed, skip=done), {"continues": "seed", "after_samples": done}
    own = extension_seed(seed, number)
    rng = np.random.default_rng(own)
    from scipy.stats import qmc

    return qmc.LatinHypercube(d=dimensions, rng=rng).random(adding), {"seed": own, "derived_from": seed}
