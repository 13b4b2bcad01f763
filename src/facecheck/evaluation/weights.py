"""Training weights from labels the data carries (never seen when scoring): every group of
people, or every source (camera or generator), the same total weight within its class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facecheck.evaluation.groups import UNKNOWN, groups_of


def _equalised(keys: Sequence[tuple | None]) -> np.ndarray:
    """Weights giving each cell the same total within its stratum, the stratum's total
    kept: ``keys[i]`` = (stratum, cell), or None for weight 1. A record of cell c in a
    stratum of n records and k cells weighs n / (k * n_c)."""
    w = np.ones(len(keys))
    strata: dict[tuple, dict[tuple, list[int]]] = {}
    for i, k in enumerate(keys):
        if k is not None:
            strata.setdefault(k[0], {}).setdefault(k[1], []).append(i)
    for cells in strata.values():
        n = sum(len(ix) for ix in cells.values())
        for ix in cells.values():
            w[ix] = n / (len(cells) * len(ix))
    return w


def group_weights(records: Sequence, attributes: Sequence[str]) -> np.ndarray:
    """Weights that give every group (the joint of ``attributes``, e.g. gender and race)
    the same total weight within each source and class. Records without those labels weigh
    1 (issue 31, item 4)."""
    keys = []
    for r in records:
        g = groups_of(r) or {}
        cell = tuple(g.get(a, UNKNOWN) for a in attributes)
        keys.append(None if not attributes or UNKNOWN in cell else ((r.source, r.label), cell))
    return _equalised(keys)


def source_weights(records: Sequence) -> np.ndarray:
    """Weights that give every source the same total weight within its class: each real
    camera as much as the largest, each fake generator or family too (issue 26: "every
    real source in training with per-source balancing")."""
    return _equalised([((r.label,), (r.source,)) for r in records])
