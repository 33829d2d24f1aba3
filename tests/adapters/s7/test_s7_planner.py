"""The S7 read planner (pure): coalescing by area and DB, holes, the PDU budget of requests and answers."""

from __future__ import annotations

from adapters.s7.address import parse_address
from adapters.s7.planner import MAX_ITEMS, item_capacity, plan_reads


def located(*pairs: tuple[str, str | None]) -> list[tuple[int, object]]:
    return [(i, parse_address(a, t)) for i, (a, t) in enumerate(pairs)]


def answer_bytes(sizes: list[int]) -> int:
    return 14 + sum(4 + s for s in sizes) + sum(s & 1 for s in sizes[:-1])


def test_tags_of_one_db_join_across_small_holes_only() -> None:
    tags = located(("DB10.DBW0", None), ("DB10.DBD10", "REAL"), ("DB10.DBW100", None), ("DB11.DBW0", None),
                   ("M10.1", None), ("MW12", None), ("I0.0", None))
    blocks, packets = plan_reads(tags, 480, max_gap=32)  # type: ignore[arg-type]
    spans = [(b.area, b.db, b.start, b.size) for b in blocks]
    assert spans == [("I", 0, 0, 1), ("M", 0, 10, 4), ("DB", 10, 0, 14), ("DB", 10, 100, 2), ("DB", 11, 0, 2)]
    assert len(packets) == 1 and len(packets[0].chunks) == 5


def test_no_coalescing_gives_one_request_per_tag() -> None:
    tags = located(("DB10.DBW0", None), ("DB10.DBW2", None), ("DB10.DBW4", None))
    blocks, packets = plan_reads(tags, 480, coalesce=False)  # type: ignore[arg-type]
    assert [(b.start, b.size) for b in blocks] == [(0, 2), (2, 2), (4, 2)]
    assert [len(p.chunks) for p in packets] == [1, 1, 1]


def test_requests_and_answers_fit_the_negotiated_pdu() -> None:
    for pdu in (240, 480, 960):
        # 60 odd-sized blocks (3 bytes each, far apart) and one long WSTRING
        tags = located(*[(f"DB{n}.DBB0", "STRING[1]") for n in range(1, 61)], ("DB99.DBB0", "WSTRING[400]"))
        blocks, packets = plan_reads(tags, pdu)  # type: ignore[arg-type]
        for p in packets:
            assert len(p.chunks) <= MAX_ITEMS
            assert 12 + 12 * len(p.chunks) <= pdu
            assert answer_bytes([c.size for c in p.chunks]) <= pdu
            assert all(c.size <= item_capacity(pdu) for c in p.chunks)
        wstring = [c for p in packets for c in p.chunks if c.db == 99]
        assert sum(c.size for c in wstring) == 804 and [c.part for c in wstring] == list(range(len(wstring)))
        assert sum(len(p.chunks) for p in packets) == 60 + len(wstring)
