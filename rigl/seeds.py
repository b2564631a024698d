"""Seeds derived from names, the same in every process.

Python's ``hash`` of a string changes from process to process, so seeds made with it give
different masks on different workers (the reference code's bug). Every seed derived from a
layer or variable name goes through ``name_hash`` (crc32) instead.
"""

from __future__ import annotations

import zlib


def name_hash(text: str) -> int:
    """crc32 of ``text`` (UTF-8): an unsigned 32-bit number, stable across processes."""
    return zlib.crc32(text.encode("utf-8"))


def stable_seed(*parts) -> int:
    """A 31-bit seed from ``parts`` (joined with "/"), the same in every process."""
    return name_hash("/".join(str(p) for p in parts)) & 0x7FFFFFFF


def layer_seed(seed: int, name: str) -> list[int]:
    """A numpy ``default_rng`` seed for layer ``name``: ``[seed, name_hash(name)]``."""
    return [int(seed), name_hash(name)]
