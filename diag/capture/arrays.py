"""Set tests on the reader's integer arrays, cheaper than numpy's general ones at batch sizes.

A batch holds some ten thousand packets and the sets tested against are a
handful of constants (VLAN TPIDs, ICMP error types) or, for link types, one
value in nearly every capture. ``np.isin`` and ``np.unique`` sort or hash for
the general case, which costs several times more than a few comparisons.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from diag.capture.bytesview import IntArray


def is_one_of(values: IntArray, choices: IntArray | tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """``np.isin(values, choices)`` for a short list of choices: one comparison per choice."""
    found = np.zeros(len(values), dtype=bool)
    for choice in choices:
        found |= values == choice
    return found


def distinct(values: IntArray) -> IntArray:
    """``np.unique(values)``, answered by one min/max pass when all values are equal."""
    if len(values) and values.min() == values.max():
        return values[:1].copy()
    return np.unique(values)
