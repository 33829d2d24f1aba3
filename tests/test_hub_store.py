"""The hub against a real PostgreSQL: migrations, enrolment, verification, continuity, idempotent store,
incidents and receipts (collector/hub/). Each test has its own database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector.evidence.keys import Signer, generate, public_b64
from collector.evidence.records import key_body, sign_record, verify_lines
from collector.hub import db
from collector.hub.bulletin import JIAXING
from collector.hub.enroll import EnrolError, enrol, parse_csv
from collector.hub.ingest import ingest
from collector.hub.receipts import verify_receipt
from tests.hubsupport import Collector, month_body, pg_url  # noqa: F401  (fixture)

A, B = "91330402MA2B3C4D53", "91330411MA2B3C4D67"
HUB = Signer(generate())


def enrol_two(conn: Any, *collectors: Collector) -> None:
    lines = ["统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识"]
    for c in collectors:
        code, name, county = (A, "恒达机械", "南湖区") if c.enterprise == "jx-hengda" else (B, "秀洲精工", "秀洲区")
        lines.append(f"{code},{name},{county},通用设备制造业,是,{c.public_key},{c.enterprise}")
    enrol(conn, parse_csv("\n".join(lines) + "\n", "test.csv", JIAXING))


@pytest.fixture
def conn(pg_url: str) -> Any:  # noqa: F811
    with db.migrated(pg_url) as c:
        yield c


def put(conn: Any, msg: dict[str, Any], sender: str = A) -> Any:
    with conn.transaction():
        return ingest(conn, msg, sender, HUB, "test-hub")


def count(conn: Any, sql: str, *args: Any) -> int:
    return int(conn.execute(sql, args).fetchone()["n"])


def test_migrations_apply_once_and_record_their_version(pg_url: str) -> None:  # noqa: F811
    with db.connect(pg_url) as conn:
        assert db.schema_version(conn) == 0
        assert db.migrate(conn) == [1, 2]
        assert db.migrate(conn) == []
        assert db.schema_version(conn) == db.LATEST
        tables = {r["t"] for r in conn.execute(
            "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert {"schema_migrations", "enterprises", "keys", "chains", "records", "incidents"} <= tables


def test_no_server_is_a_message_naming_the_package() -> None:
    with pytest.raises(db.DatabaseUnavailable) as err:
        db.connect("postgresql://postgres@127.0.0.1:1/hub")
    assert "apt-get install postgresql" in str(err.value)
    assert "password" not in db.redact("postgresql://u:secret@127.0.0.1/hub")
    assert "secret" not in db.redact("postgresql://u:secret@127.0.0.1/hub")


def test_enrolment_csv_is_all_or_nothing_and_names_each_bad_cell(conn: Any) -> None:
    c1, c2 = Collector("jx-hengda", "ws-1"), Collector("jx-hengda", "ws-2")
    good = (f"统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识\n"
            f"{A},恒达机械,南湖区,通用设备制造业,是,{c1.public_key},jx-hengda\n"
            f"{A},恒达机械,南湖区,通用设备制造业,是,{c2.public_key},jx-hengda\n")
    rows = parse_csv(good, "t.csv", JIAXING)
    assert len(rows) == 1 and len(rows[0].keys) == 2 and rows[0].backbone
    res = enrol(conn, rows)
    assert (res.enterprises_new, res.keys_new) == (1, 2)
    assert enrol(conn, rows).keys_new == 0  # re-enrolling the same file changes nothing
    bad = (f"统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥\n"
           f"{B},秀洲精工,上海市,x,也许,{c1.public_key}\n"
           f"12345,,南湖区,x,否,not-a-key\n"
           f"91330402MA2B3C4D54,恒达机械,南湖区,x,否,{c2.public_key}\n")
    with pytest.raises(EnrolError) as err:
        parse_csv(bad, "t.csv", JIAXING)
    text = "\n".join(err.value.lines)
    assert "row 2: 县（市、区） '上海市' is not one of" in text
    assert "row 2: 行业骨干企业 '也许'" in text
    assert "row 3: 统一社会信用代码 '12345'" in text
    assert "row 3: 企业名称 is empty" in text
    assert "row 3: 公钥" in text
    assert "row 4: 统一社会信用代码 '91330402MA2B3C4D54' check character is '4' but" in text
    assert count(conn, "SELECT count(*) AS n FROM enterprises") == 1


def test_records_are_verified_stored_once_and_receipted(conn: Any) -> None:
    c = Collector("jx-hengda", "ws-1")
    enrol_two(conn, c)
    first = put(conn, c.records[0])  # the key record, in full
    assert first.status == "accepted", first.reason
    assert verify_receipt(first.receipt, HUB.public) is None
    assert first.receipt["seq"] == 1 and first.receipt["hash"] == c.records[0]["hash"]
    summary = c.close_month("2026-11", (5, 7), (4, 6))
    head = put(conn, c.anchor(summary, "month_close"))  # the head first, the body after it
    assert head.status == "accepted", head.reason
    again = put(conn, summary)
    assert again.status == "duplicate" and again.receipt == head.receipt  # the first receipt, given again
    assert put(conn, summary).status == "duplicate"
    rows = conn.execute("SELECT seq, body_kind, period, body->'figures'->'D2'->>'numerator' AS n "
                        "FROM records ORDER BY seq").fetchall()
    assert [(r["seq"], r["body_kind"], r["period"], r["n"]) for r in rows] == [
        (1, "key", None, None), (2, "monthly_summary", "2026-11", "4")]
    edited = dict(head.receipt, status="refused")
    assert verify_receipt(edited, HUB.public) == "the hub's signature does not verify (forged or edited)"
    assert "not" in (verify_receipt(head.receipt, Signer(generate()).public) or "")


def test_what_is_refused_stores_nothing(conn: Any) -> None:
    c, other = Collector("jx-hengda", "ws-1"), Collector("jx-xiuzhou", "ws-1")
    enrol_two(conn, c, other)
    assert put(conn, c.records[0], sender="91330100MA2B3C4D7W").status == "refused"  # not enrolled
    out = put(conn, other.records[0], sender=A)  # B's record, sent by A
    assert out.status == "refused" and "names enterprise 'jx-xiuzhou'" in str(out.reason)
    stranger = Collector("jx-hengda", "ws-9")  # a key never enrolled
    out = put(conn, stranger.records[0])
    assert out.status == "refused" and "not enrolled for" in str(out.reason)
    forged = dict(c.records[0], sig=other.records[0]["sig"])
    out = put(conn, forged)
    assert out.status == "refused" and "signature does not verify" in str(out.reason)
    edited = c.close_month("2026-11", (5, 7), (4, 6))
    edited = dict(edited, body={**edited["body"], "figures": month_body("jx-hengda", "ws-1", "2026-11", (7, 7),
                                                                        (6, 6))["figures"]})
    out = put(conn, edited)
    assert out.status == "refused" and "does not match the record's hash" in str(out.reason)
    assert count(conn, "SELECT count(*) AS n FROM records") == 0
    assert count(conn, "SELECT count(*) AS n FROM incidents") == 0


def test_a_rewritten_history_is_an_incident(conn: Any) -> None:
    c = Collector("jx-hengda", "ws-1")
    enrol_two(conn, c)
    real = c.close_month("2026-10", (5, 7), (3, 6))
    for r in c.records:
        assert put(conn, r).status == "accepted"
    # the keeper rewrites record 2 with better figures and re-signs it with the enrolled key itself
    forged = sign_record(c.signer, enterprise="jx-hengda", workshop="ws-1", seq=2, ts=real["ts"],
                         prev=real["prev"], body=month_body("jx-hengda", "ws-1", "2026-10", (7, 7), (6, 6)))
    out = put(conn, forged)
    assert out.status == "incident" and "a rewritten history" in str(out.reason)
    assert verify_receipt(out.receipt, HUB.public) is None and out.receipt["status"] == "incident"
    # a record 3 that follows another record 2 than the one held
    nxt = sign_record(c.signer, enterprise="jx-hengda", workshop="ws-1", seq=3, ts="2026-12-04T00:00:41+08:00",
                      prev=forged["hash"], body=month_body("jx-hengda", "ws-1", "2026-11", (7, 7), (6, 6)))
    out = put(conn, nxt)
    assert out.status == "incident" and "prev is not the hash of record 2" in str(out.reason)
    # a monthly summary dated before its month closes
    early = sign_record(c.signer, enterprise="jx-hengda", workshop="ws-1", seq=3, ts="2026-11-20T00:00:00+08:00",
                        prev=real["hash"], body=month_body("jx-hengda", "ws-1", "2026-11", (7, 7), (6, 6)))
    out = put(conn, early)
    assert out.status == "incident" and "back-dated" in str(out.reason)
    held = conn.execute("SELECT hash FROM records WHERE seq = 2").fetchone()
    assert held["hash"] == real["hash"]  # the held record is untouched
    assert count(conn, "SELECT count(*) AS n FROM incidents WHERE enterprise_id = %s", A) == 3


def test_key_rotation_signed_by_the_old_key_enrols_the_new_one(conn: Any) -> None:
    c = Collector("jx-hengda", "ws-1")
    enrol_two(conn, c)
    assert put(conn, c.records[0]).status == "accepted"
    new = Signer(generate())
    rot = c.append(key_body(new.public, c.signer.fingerprint), "2026-10-01T08:00:00+08:00")  # signed by the old
    assert put(conn, rot).status == "accepted"
    row = conn.execute("SELECT public_key, introduced_by FROM keys WHERE fingerprint = %s",
                       (new.fingerprint,)).fetchone()
    assert row["public_key"] == public_b64(new.public) and row["introduced_by"] == c.signer.fingerprint
    old_after = c.close_month("2026-10", (5, 7), (3, 6))  # still signed by the old key: after its rotation
    out = put(conn, old_after)
    assert out.status == "incident" and "rotated away at record 2" in str(out.reason)
    c.records.pop()
    c.signer = new
    assert put(conn, c.close_month("2026-10", (5, 7), (3, 6))).status == "accepted"


def test_enrolled_by_fingerprint_learns_the_key_from_its_key_record(conn: Any) -> None:
    c = Collector("jx-hengda", "ws-1")
    enrol(conn, parse_csv(f"统一社会信用代码,企业名称,县（市、区）,行业骨干企业,密钥指纹,采集器企业标识\n"
                          f"{A},恒达机械,南湖区,是,{c.signer.fingerprint.upper()},jx-hengda\n", "t.csv", JIAXING))
    summary = c.close_month("2026-11", (5, 7), (4, 6))
    assert "enrolled by fingerprint only" in str(put(conn, summary).reason)
    assert put(conn, c.records[0]).status == "accepted"
    assert put(conn, summary).status == "accepted"


def test_the_test_chains_are_chains_collector_verify_accepts(tmp_path: Path) -> None:
    c = Collector("jx-hengda", "ws-1")
    c.close_month("2026-11", (1, 2), (1, 2))
    lines = c.write_chain(tmp_path / "chain.jsonl").read_bytes().splitlines()
    result = verify_lines(lines, c.signer.public)
    assert result.ok and result.records == 2, result.reason
