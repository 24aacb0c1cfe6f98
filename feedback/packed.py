"""A batch's record values packed as one buffer: what the consumer loop hands to a flush worker.

``PackedValues`` is a read-only sequence of ``bytes | None`` (a Kafka record value, None for a
tombstone) held as one ``bytes`` blob plus an offsets array, the form a batch crosses the process
boundary in (one copy instead of an object per record). A record's bytes object is made only when
someone asks for it (the model's slow path, a test); the batch fast path (``feedback.fast_events``)
screens and decodes straight from the blob, and Arrow's ``raw`` column shares the blob's memory.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np


class PackedValues(Sequence):
    """Record values as ``blob[offsets[i]:offsets[i + 1]]``; positions in ``nones`` are None (tombstones).

    ``blob``: ``bytes``, or a ``memoryview`` of shared memory (``feedback.handoff``); a value asked for
    is always ``bytes``."""

    __slots__ = ("blob", "offsets", "nones")

    def __init__(self, blob: bytes | memoryview, offsets: np.ndarray, nones: frozenset[int] = frozenset()) -> None:
        self.blob = blob
        self.offsets = offsets  # int64, len(values) + 1, offsets[0] == 0
        self.nones = nones

    @classmethod
    def pack(cls, values: Sequence[bytes | None]) -> PackedValues:
        """Pack a sequence of values (one copy of their bytes)."""
        if isinstance(values, PackedValues):
            return values
        return cls.from_lengths(*cls.encode(values))

    @staticmethod
    def encode(values: Sequence[bytes | None]) -> tuple[bytes, bytes]:
        """(blob, lengths) of a sequence of values: ``from_lengths`` makes them a ``PackedValues``."""
        if isinstance(values, PackedValues):
            return bytes(values.blob), values.lengths()
        if None in values:
            lengths = array("q", [-1 if v is None else len(v) for v in values])
            return b"".join(v for v in values if v), lengths.tobytes()
        return b"".join(values), array("q", map(len, values)).tobytes()

    @classmethod
    def from_lengths(cls, blob: bytes | memoryview, lengths: bytes) -> PackedValues:
        """From the blob and the values' lengths (int64 bytes, -1 for None), as ``lengths()`` gives them."""
        sizes = np.frombuffer(lengths, dtype=np.int64)
        missing = sizes < 0
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(np.where(missing, 0, sizes), out=offsets[1:])
        if int(offsets[-1]) != len(blob):
            raise ValueError(f"packed values: lengths add up to {int(offsets[-1])} bytes, the blob has {len(blob)}")
        return cls(blob, offsets, frozenset(np.flatnonzero(missing).tolist()) if missing.any() else frozenset())

    def lengths(self) -> bytes:
        """The values' lengths as int64 bytes, -1 for None (``from_lengths`` reads them back)."""
        sizes = np.diff(self.offsets)
        if self.nones:
            sizes[list(self.nones)] = -1
        return sizes.astype(np.int64).tobytes()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> bytes | None: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes | None]: ...
    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("packed value index out of range")
        if i in self.nones:
            return None
        return bytes(self.blob[int(self.offsets[i]):int(self.offsets[i + 1])])

    def __iter__(self) -> Iterator[bytes | None]:
        blob, nones = self.blob, self.nones
        bounds = self.offsets.tolist()
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            yield None if nones and i in nones else bytes(blob[a:b])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedValues):
            return self.blob == other.blob and self.nones == other.nones and np.array_equal(self.offsets, other.offsets)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedValues({len(self)} values, {len(self.blob)} bytes)"
