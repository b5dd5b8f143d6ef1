"""Deterministic train/val/test assignment by hashing a key.

The split of a document (or of an instruction group, such as a module) depends
only on its key, the seed and the fractions: adding or removing other
documents never moves it, and a restart reproduces it exactly.
"""

from __future__ import annotations

import hashlib


def unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) derived from ``key`` and ``seed``."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    u = unit_hash(key, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
