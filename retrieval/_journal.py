"""The dense index's journal: the vectors a sync embedded since it last wrote the index
file, appended batch by batch beside it (``dense.npz.journal``).

Rewriting the index file costs time in proportion to its size (a 100 MB index: 2-5 s on
these machines, fsync included), so it is written rarely; appending a batch costs what
the batch weighs (~50 KB for 32 chunks: ~5 ms). A kill therefore loses at most the batch
under way, and the next sync folds the journal into the index before it embeds what is
still missing.

A record is ``MAGIC | crc32 | length | npz(vectors, ids, hashes, meta)``. A kill mid-append
leaves a torn last record: reading stops at the first record that is short or fails its
checksum, and the writer cuts the file back to the records before it.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"TJV1"
_HEAD = struct.Struct("<4sIQ")


@dataclass
class Batch:
    vectors: np.ndarray
    ids: np.ndarray
    hashes: np.ndarray


class Journal:
    def __init__(self, index_path: Path) -> None:
        self.path = index_path.with_name(index_path.name + ".journal")
        self.last_cost = 0.0  # seconds the last append took (write + fsync)

    def exists(self) -> bool:
        return self.path.exists()

    def read(self, model: str, dim: int) -> list[Batch]:
        """The whole records for this embedding model (others are of no use to the
        index), and the file cut back to its whole records so appends follow them."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        batches, end = [], 0
        while end + _HEAD.size <= len(data):
            magic, crc, length = _HEAD.unpack_from(data, end)
            start = end + _HEAD.size
            payload = data[start : start + length]
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                break
            try:
                with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                    meta = json.loads(str(npz["__meta__"]))
                    batch = Batch(npz["vectors"], npz["ids"], npz["hashes"])
            except Exception:  # noqa: BLE001 - a record that does not load ends the journal
                break
            if (meta.get("model"), meta.get("dim")) == (model, dim):
                batches.append(batch)
            end = start + length
        if end < len(data):
            os.truncate(self.path, end)  # the torn record a kill left
        return batches

    def append(self, vectors: np.ndarray, ids: np.ndarray, hashes: np.ndarray, *,
               model: str, dim: int) -> None:
        started = time.perf_counter()
        buf = io.BytesIO()
        np.savez(buf, vectors=np.ascontiguousarray(vectors, np.float32),
                 ids=np.asarray(ids, np.int64), hashes=np.asarray(hashes, np.int64),
                 __meta__=np.array(json.dumps({"model": model, "dim": dim})))
        payload = buf.getvalue()
        # One write in append mode, then fsync: the record is whole on disk or torn at
        # the end, where read() finds and drops it.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            record = memoryview(_HEAD.pack(MAGIC, zlib.crc32(payload), len(payload)) + payload)
            while record:
                record = record[os.write(fd, record):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.last_cost = time.perf_counter() - started

    def discard(self) -> None:
        """Once the index file holds everything the journal had."""
        self.path.unlink(missing_ok=True)
