"""Live snapshots (collector/evidence/live.py) at the hub: signed by the enterprise's key, the newest per
collector kept, no receipt, and the bulletin says when a collector that has not reported was last seen. Against a
real PostgreSQL (each test its own database)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from collector.evidence.keys import Signer, generate
from collector.evidence.live import live_message, verify_live
from collector.hub import db
from collector.hub.bulletin import JIAXING, build
from collector.hub.ingest import ingest_batch
from tests.hubsupport import Collector, pg_url  # noqa: F401  (fixture)
from tests.test_hub_store import HUB, A, B, enrol_two


def snapshot(ts: str, d1: tuple[int, int], d2: tuple[int, int], enterprise: str = "jx-hengda",
             banner: str | None = None) -> dict[str, Any]:
    """The shape of `{root}/indicators` (docs/mqtt.md), as `Collector.indicators()` makes it."""
    return {"defset": "v1", "period": "now", "ts": ts, "enterprise": enterprise, "banner": banner,
            "figures": {"D1": {"numerator": d1[0], "denominator": d1[1], "value": d1[0] / d1[1]},
                        "D2": {"numerator": d2[0], "denominator": d2[1], "value": d2[0] / d2[1]}},
            "periods": {"month": {"period": {"kind": "month", "label": "2026-11"}, "status": "provisional",
                                  "figures": {"D1": {"numerator": 6, "denominator": 9},
                                              "D2": {"numerator": 5, "denominator": 8}}}}}


def test_a_live_message_verifies_and_an_edit_does_not() -> None:
    signer, other = Signer(generate()), Signer(generate())
    msg = live_message(signer, snapshot("2026-11-20T08:00:00Z", (7, 9), (7, 8)), "ws-1")
    assert msg["figures"] == {"D1": {"numerator": 7, "denominator": 9}, "D2": {"numerator": 7, "denominator": 8}}
    assert msg["month"] == {"label": "2026-11", "figures": {"D1": {"numerator": 6, "denominator": 9},
                                                            "D2": {"numerator": 5, "denominator": 8}}}
    assert verify_live(msg, signer.public) is None
    edited = copy.deepcopy(msg)
    edited["figures"]["D2"]["numerator"] = 8
    assert verify_live(edited, signer.public) == "the signature does not verify (forged or edited)"
    assert "not" in str(verify_live(msg, other.public)) and "signed by key" in str(verify_live(msg, other.public))


@pytest.fixture
def conn(pg_url: str) -> Any:  # noqa: F811
    with db.migrated(pg_url) as c:
        yield c


def test_the_newest_live_snapshot_is_kept_without_a_receipt(conn: Any) -> None:
    a, b = Collector("jx-hengda", "ws-1"), Collector("jx-xiuzhou", "ws-1")
    enrol_two(conn, a, b)
    newer = live_message(a.signer, snapshot("2026-11-20T08:01:00Z", (7, 9), (7, 8)), "ws-1")
    older = live_message(a.signer, snapshot("2026-11-20T08:00:00Z", (1, 9), (1, 8)), "ws-1")
    forged = copy.deepcopy(newer)
    forged["figures"]["D1"]["numerator"] = 9
    foreign = live_message(b.signer, snapshot("2026-11-20T08:00:00Z", (1, 2), (1, 2), "jx-xiuzhou"), "ws-1")
    with conn.transaction():
        outs = ingest_batch(conn, [(A, newer), (A, older), (A, forged), (A, foreign), ("91330400000000000X", newer)],
                            HUB, "test-hub")
    assert [o.status for o in outs] == ["live", "live", "live_refused", "live_refused", "live_refused"]
    assert [o.receipt for o in outs] == [{}] * 5  # a snapshot is not evidence: no receipt
    assert "does not verify" in str(outs[2].reason)
    assert "jx-xiuzhou" in str(outs[3].reason)  # B's collector id, sent with A's credentials
    assert "not enrolled" in str(outs[4].reason)
    rows = conn.execute("SELECT enterprise_id, workshop, figures, month, ts FROM live").fetchall()
    assert len(rows) == 1  # one per collector, the newest: the older one that came later did not replace it
    assert rows[0]["figures"] == {"D1": {"numerator": 7, "denominator": 9}, "D2": {"numerator": 7, "denominator": 8}}
    assert rows[0]["month"]["label"] == "2026-11"
    assert rows[0]["ts"].isoformat().startswith("2026-11-20T08:01:00")
    assert conn.execute("SELECT count(*) AS n FROM records").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM incidents").fetchone()["n"] == 0


def test_the_bulletin_says_when_a_collector_that_has_not_reported_was_last_seen(conn: Any) -> None:
    a, b = Collector("jx-hengda", "ws-1"), Collector("jx-xiuzhou", "ws-1")
    enrol_two(conn, a, b)
    with conn.transaction():
        outs = ingest_batch(conn, [(A, live_message(a.signer, snapshot("2026-12-01T08:00:00Z", (7, 9), (7, 8)),
                                                    "ws-1"))], HUB, "test-hub", received_at="2026-12-01T08:00:02Z")
    assert outs[0].status == "live"
    bulletin = build(conn, "2026-11", JIAXING)
    nonrep = {e["id"]: e for c in bulletin["counties"] for e in c["non_reporting"]}
    assert nonrep[A]["last_seen"] == "2026-12-01T08:00:02Z"  # alive, but no monthly summary yet
    assert nonrep[B]["last_seen"] is None  # never seen
    from collector.hub.render import render

    page = render(bulletin, "html")
    assert "采集器最近上报 2026-12-01T08:00:02Z" in page and "采集器从未上报" in page
    assert "its collector was last seen 2026-12-01T08:00:02Z" in render(bulletin, "html", "en")
