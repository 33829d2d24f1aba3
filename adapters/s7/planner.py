"""Read planner: a device's tags as few S7 read requests as the negotiated PDU allows.

A request costs one round trip whatever it holds, so (like the Modbus planner) tags of one area and DB are
joined into one *block* while the hole between them is at most `max_gap` bytes and the block still fits one
item of an answer; then blocks are packed, several items per request ("read multiple variables"), until the
request or its answer would outgrow the PDU or the CPU's 20 items. A single tag longer than an item (a long
WSTRING) is read in chunks and put together again. Pure: no I/O; it runs once per negotiated PDU size.

Sizes (S7 protocol): a read request is a 10-byte header, 2 bytes of parameter head and 12 bytes per item; the
answer a 12-byte header, 2 bytes of parameter and per item 4 bytes of head, the data, and a fill byte after
odd-length data (except after the last item).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adapters.s7.address import S7Location

__all__ = ["MAX_ITEMS", "Block", "Chunk", "Packet", "plan_reads"]

MAX_ITEMS = 20
"""Items per read request: what S7-300/400 and 1200/1500 CPUs accept (snap7's MAX_VARS)."""
_REQUEST_HEAD, _REQUEST_ITEM = 12, 12  # header (10) + function and item count (2); per item
_ANSWER_HEAD, _ANSWER_ITEM = 14, 4  # header (12) + function and item count (2); per item head
_AREA_ORDER = {"I": 0, "Q": 1, "M": 2, "DB": 3}


@dataclass(slots=True)
class Block:
    """Bytes `start`..`start + size` of one area (and DB) read as one; `tags` are (tag index, location)."""

    area: str
    db: int
    start: int
    size: int
    tags: list[tuple[int, S7Location]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + self.size

    def describe(self) -> str:
        where = f"DB{self.db}" if self.area == "DB" else self.area
        return f"{where} bytes {self.start}..{self.end - 1}"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One item of a request: `size` bytes from `start`; part `part` of block `block` (index in the plan)."""

    block: int
    part: int
    area: str
    db: int
    start: int
    size: int


@dataclass(slots=True)
class Packet:
    """One read request: its items, in order."""

    chunks: list[Chunk] = field(default_factory=list)


def item_capacity(pdu: int) -> int:
    """The most data bytes one item of an answer can carry (an answer with this one item)."""
    return pdu - _ANSWER_HEAD - _ANSWER_ITEM


def plan_blocks(tags: Iterable[tuple[int, S7Location]], pdu: int, max_gap: int = 32,
                coalesce: bool = True) -> list[Block]:
    """Join tags (index, location) into blocks: same area and DB, holes <= `max_gap`, within one item."""
    cap = item_capacity(pdu)
    groups: dict[tuple[str, int], list[tuple[int, S7Location]]] = {}
    for i, loc in tags:
        groups.setdefault((loc.area, loc.db), []).append((i, loc))
    blocks: list[Block] = []
    for area, db in sorted(groups, key=lambda k: (_AREA_ORDER[k[0]], k[1])):
        current: Block | None = None
        for i, loc in sorted(groups[(area, db)], key=lambda t: (t[1].start, t[1].size)):
            end = loc.end
            if current is not None and coalesce and loc.start - current.end <= max_gap \
                    and max(end, current.end) - current.start <= cap:
                current.size = max(end, current.end) - current.start
                current.tags.append((i, loc))
                continue
            current = Block(area, db, loc.start, loc.size, [(i, loc)])
            blocks.append(current)
    return blocks


def chunks_of(blocks: Sequence[Block], pdu: int) -> list[Chunk]:
    """Every block as items of at most one item's capacity (a block longer than that in several parts)."""
    cap = item_capacity(pdu)
    out: list[Chunk] = []
    for n, b in enumerate(blocks):
        for part, offset in enumerate(range(0, b.size, cap)):
            out.append(Chunk(n, part, b.area, b.db, b.start + offset, min(cap, b.size - offset)))
    return out


def pack(chunks: Sequence[Chunk], pdu: int, max_items: int = MAX_ITEMS) -> list[Packet]:
    """Items into requests, in order: a request takes items while it, and its answer, fit the PDU."""
    max_items = min(max_items, (pdu - _REQUEST_HEAD) // _REQUEST_ITEM)
    packets: list[Packet] = []
    current: Packet | None = None
    used = 0
    for c in chunks:
        cost = _ANSWER_ITEM + c.size + (c.size & 1)  # the fill byte after odd data (not after the last: slack)
        if current is None or len(current.chunks) >= max_items or used + cost - (c.size & 1) > pdu - _ANSWER_HEAD:
            current = Packet()
            packets.append(current)
            used = 0
        current.chunks.append(c)
        used += cost
    return packets


def plan_reads(tags: Iterable[tuple[int, S7Location]], pdu: int, max_gap: int = 32,
               coalesce: bool = True) -> tuple[list[Block], list[Packet]]:
    """The blocks of a device's tags and the requests that read them."""
    blocks = plan_blocks(tags, pdu, max_gap, coalesce)
    return blocks, pack(chunks_of(blocks, pdu), pdu, MAX_ITEMS if coalesce else 1)
