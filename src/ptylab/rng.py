"""Seeded random streams named by the stage that uses them (no global RNG anywhere)."""

from __future__ import annotations

import zlib

import numpy as np


def stage_rng(seed: int, *stage: object) -> np.random.Generator:
    """A generator determined by the run seed and the stage's identity, e.g. ("noise", 1e3, "train").

    Identities are hashed with CRC32 of their text so that the stream does not depend on Python's
    per-process string hashing.
    """
    key = tuple(zlib.crc32(repr(part).encode()) for part in stage)
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=key))
