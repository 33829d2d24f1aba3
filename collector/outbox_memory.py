"""What the outbox keeps while it cannot write its database: the rows waiting in memory (`MemoryRows`, as
encoded bytes in large chunks) and the sequence high-water marks (`SeqMarks`, in a preallocated side file).

Why not the pending tuples themselves: each small orjson payload keeps its ~4 kB working buffer, and the
tuples, ints and floats around it fill pymalloc arenas that a few survivors keep alive for good: in the field
64 MB of payload cost ~500 MB of RSS, and it stayed after recovery. Here a row is one record (a fixed header,
the device name, the payload) in a preallocated chunk, plus 16 bytes of index; `size` counts the chunks' full
capacity and the index, so a cap on it bounds what is really held. A chunk is freed whole once its rows are
delivered or dropped, so its memory can go back to the OS (`collector.outbox.release_free_memory`).
"""

from __future__ import annotations

import bisect
import json
import os
import struct
from array import array
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from collector.model import Row

Pending = tuple[int, str, int, float, "float | None", int, bytes]
"""A row not committed yet: (id, device, seq, created, good_ts, n, payload), the fields of `Row`."""

HEADER = struct.Struct("<qqddiH?")  # id, seq, created, good_ts, n, device length, has good_ts
INDEX_COST = 16  # bytes per row in the two index arrays


class _Chunk:
    __slots__ = ("buf", "used", "ids", "offs", "head")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.used = 0
        self.ids = array("q")
        self.offs = array("q")
        self.head = 0  # rows before it are gone (delivered or dropped)

    def end(self, i: int) -> int:
        return self.offs[i + 1] if i + 1 < len(self.offs) else self.used

    def row(self, i: int) -> Pending:
        off = self.offs[i]
        rid, seq, created, good, n, dev_len, has_good = HEADER.unpack_from(self.buf, off)
        view = memoryview(self.buf)
        start = off + HEADER.size
        device = str(view[start:start + dev_len], "utf-8")
        payload = bytes(view[start + dev_len:self.end(i)])
        return rid, device, seq, created, good if has_good else None, n, payload

    def n_and_payload_len(self, i: int) -> tuple[int, int]:
        _, _, _, _, n, dev_len, _ = HEADER.unpack_from(self.buf, self.offs[i])
        return n, self.end(i) - self.offs[i] - HEADER.size - dev_len


class MemoryRows:
    """One sink's rows in memory, in id order; `ack` marks delivered ones, `cap` drops the oldest chunks."""

    def __init__(self, chunk_bytes: int = 256 * 1024) -> None:
        self.chunk_bytes = chunk_bytes
        self.chunks: deque[_Chunk] = deque()
        self.acked: set[int] = set()  # delivered rows not yet passed by a chunk's head
        self.size = 0  # bytes held: chunk capacity + index
        self.count = 0  # rows waiting (not delivered)
        self.readings = 0
        self.payload_bytes = 0

    def __bool__(self) -> bool:
        return bool(self.chunks)

    def add(self, p: Pending) -> None:
        rid, device, seq, created, good_ts, n, payload = p
        dev = device.encode()
        need = HEADER.size + len(dev) + len(payload)
        c = self.chunks[-1] if self.chunks else None
        if c is None or c.used + need > len(c.buf):
            c = _Chunk(max(self.chunk_bytes, need))
            self.chunks.append(c)
            self.size += len(c.buf)
        off = c.used
        HEADER.pack_into(c.buf, off, rid, seq, created, good_ts or 0.0, n, len(dev), good_ts is not None)
        start = off + HEADER.size
        c.buf[start:start + len(dev)] = dev
        c.buf[start + len(dev):off + need] = payload
        c.used = off + need
        c.ids.append(rid)
        c.offs.append(off)
        self.size += INDEX_COST
        self.count += 1
        self.readings += n
        self.payload_bytes += len(payload)

    def first_id(self) -> int:
        c = self.chunks[0]
        return c.ids[c.head] if c.head < len(c.ids) else c.ids[-1] + 1

    def last_id(self) -> int:
        return self.chunks[-1].ids[-1]

    def rows(self, after: int, upto: int | None, limit: int) -> list[Row]:
        """Rows waiting with after < id ≤ upto, oldest first, at most `limit`."""
        out: list[Row] = []
        for c in self.chunks:
            if not c.ids or c.ids[-1] <= after:
                continue
            for i in range(max(c.head, bisect.bisect_right(c.ids, after)), len(c.ids)):
                rid = c.ids[i]
                if upto is not None and rid > upto:
                    return out
                if rid not in self.acked:
                    out.append(Row(*c.row(i)))
                    if len(out) >= limit:
                        return out
        return out

    def waiting(self) -> Iterator[Pending]:
        """Every row not delivered, oldest first (decoded one by one: for the commit that writes them)."""
        for c in self.chunks:
            for i in range(c.head, len(c.ids)):
                if c.ids[i] not in self.acked:
                    yield c.row(i)

    def oldest_created(self) -> float | None:
        for c in self.chunks:
            for i in range(c.head, len(c.ids)):
                if c.ids[i] not in self.acked:
                    return float(HEADER.unpack_from(c.buf, c.offs[i])[2])
        return None

    def ack(self, row: Row) -> None:
        self.acked.add(row.id)
        self.count -= 1
        self.readings -= row.n
        self.payload_bytes -= len(row.payload)

    def purge(self) -> None:
        """Move past delivered rows at the head; free the chunks left empty."""
        while self.chunks:
            c = self.chunks[0]
            while c.head < len(c.ids) and c.ids[c.head] in self.acked:
                self.acked.discard(c.ids[c.head])
                c.head += 1
            if c.head < len(c.ids):
                return
            self._free(self.chunks.popleft())

    def cap(self, limit: int, held: set[int]) -> tuple[int, int]:
        """Drop the oldest chunks while over `limit`; return the (batches, readings) dropped. A row the
        transport holds is let go without being counted: the transport delivers it."""
        batches = readings = 0
        while self.size > limit and self.chunks:
            c = self.chunks.popleft()
            for i in range(c.head, len(c.ids)):
                rid = c.ids[i]
                if rid in self.acked:
                    self.acked.discard(rid)
                    continue
                n, payload_len = c.n_and_payload_len(i)
                self.count -= 1
                self.readings -= n
                self.payload_bytes -= payload_len
                if rid not in held:
                    batches += 1
                    readings += n
            self._free(c)
        return batches, readings

    def _free(self, c: _Chunk) -> None:
        self.size -= len(c.buf) + INDEX_COST * len(c.ids)

    def clear(self) -> None:
        self.chunks.clear()
        self.acked.clear()
        self.size = self.count = self.readings = self.payload_bytes = 0


class SeqMarks:
    """The sequence high-water marks in a preallocated side file, rewritten in place while the database cannot
    be written: numbers delivered from memory are then never handed out again after a crash (they would be
    dropped as duplicates by a consumer that dedupes on (device, seq)); what waited in memory is lost with the
    crash, and the numbers jump past it, so a subscriber sees that gap.

    Rewriting blocks that already exist needs no free space (ext4, tmpfs; a copy-on-write file system may still
    refuse). The file is made while the disk still has room, at start."""

    def __init__(self, path: Path, devices: int) -> None:
        self.path = path
        self.error: str | None = None
        self.fd: int | None = None
        self.size = 0
        size = max(64 * 1024, 64 * devices * 2)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        try:
            if os.fstat(fd).st_size < size:
                os.pwrite(fd, b" " * size, 0)  # allocate the blocks now, while there is room
                os.fsync(fd)
            self.size = os.fstat(fd).st_size
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            os.close(fd)
            return
        self.fd = fd

    def read(self) -> dict[str, int]:
        """The marks last written (empty when there are none, or they are unreadable: torn by a power cut)."""
        if self.fd is None:
            return {}
        try:
            data = os.pread(self.fd, self.size, 0).strip()
            marks = json.loads(data) if data else {}
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in marks.items()} if isinstance(marks, dict) else {}

    def write(self, seqs: dict[str, int]) -> bool:
        """Rewrite the marks in place; False (and `error`) when they could not be written."""
        if self.fd is None:
            return False
        data = json.dumps(seqs, separators=(",", ":")).encode()
        if len(data) > self.size:
            self.error = f"{len(seqs)} devices do not fit in {self.size} bytes"
            return False
        try:
            os.pwrite(self.fd, data.ljust(self.size), 0)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        self.error = None
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
