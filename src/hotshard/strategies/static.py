"""Static consistent hashing: every partition stays on its owner, whatever the load.

The "do nothing" baseline. It owns one rule, the owner lookup, so the benchmark and the
simulation name it the same way as the other strategies instead of special-casing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def place_static(owners: Sequence[str], flows: Mapping[int, float]) -> dict[int, dict[str, float]]:
    """Each partition's whole flow on its owner; the same shape as ``BoundedLoadRing.spread``.

    Example:
        >>> place_static(["a", "b"], {1: 10.0})
        {1: {'b': 10.0}}
    """
    return {p: {owners[p]: f} for p, f in flows.items()}
