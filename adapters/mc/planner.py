"""Plan the batch reads of an MC device: per device code, tags joined into reads of at most `max_points` words.

Every read is in word units (subcommand 0000): a word device's tag spans its words, a bit device's points are
read 16 to a word (the read of M0..M15 is one word), so one read of 960 words carries up to 15,360 bits. Reads
of bit devices start at a multiple of 16. Tags further apart than `max_gap` unused words are not joined.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from adapters.mc.address import DeviceCode
from adapters.mc.config import McDevice, McTag, tag_words

__all__ = ["Read", "plan_reads", "span"]


@dataclass
class Read:
    """One batch read: `points` words of `device` from word `first` (device number `number`); its tags."""

    device: DeviceCode
    first: int  # in words of the device (a bit device: point number // 16)
    points: int
    tags: list[McTag] = field(default_factory=list)

    @property
    def number(self) -> int:
        """The head device number on the wire (a bit device: its first point)."""
        return self.first * 16 if self.device.is_bit else self.first

    @property
    def last(self) -> int:
        return self.first + self.points - 1

    def __str__(self) -> str:
        return f"{self.device.name} words {self.first}+{self.points}"


def _words(tag: McTag, xy_base: int) -> tuple[int, int]:
    addr = tag.parsed(xy_base)
    first = addr.word()
    return first, first + (1 if addr.is_bit else tag_words(tag.value_type(xy_base))) - 1


def span(device: McDevice, tags: Iterable[McTag]) -> Read:
    """The one read that covers `tags` (all of one device code)."""
    tags = list(tags)
    bounds = [_words(t, device.xy_base) for t in tags]
    first = min(b[0] for b in bounds)
    last = max(b[1] for b in bounds)
    return Read(tags[0].parsed(device.xy_base).device, first, last - first + 1, tags)


def plan_reads(device: McDevice) -> list[Read]:
    """The reads of one poll, by device code then address; every tag in exactly one read."""
    xy = device.xy_base
    by_code: dict[str, list[tuple[int, int, McTag]]] = {}
    for tag in device.tags:
        first, last = _words(tag, xy)
        by_code.setdefault(tag.parsed(xy).device.name, []).append((first, last, tag))
    reads: list[Read] = []
    for entries in by_code.values():
        entries.sort(key=lambda e: (e[0], e[1]))
        current: Read | None = None
        for first, last, tag in entries:
            if current is not None and first - current.last - 1 <= device.max_gap \
                    and max(last, current.last) - current.first + 1 <= device.max_points:
                current.points = max(last, current.last) - current.first + 1
                current.tags.append(tag)
                continue
            current = Read(tag.parsed(xy).device, first, last - first + 1, [tag])
            reads.append(current)
    return reads
