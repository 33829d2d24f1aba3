"""The bulletin from what the hub holds (real PostgreSQL): pooled figures equal `collector pool` on the same
chains, pass counts and shares, non-reporting enterprises, 数据异常, the 12-month trend, csv/html/--lang en."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.credit_code import check_char
from collector.evidence.keys import Signer, generate
from collector.evidence.records import anchor_message, sign_record
from collector.hub import db
from collector.hub.bulletin import JIAXING, build, parse_period, shift
from collector.hub.enroll import enrol, parse_csv
from collector.hub.ingest import ingest
from collector.hub.render import render
from tests.hubsupport import Collector, month_body, pg_url  # noqa: F401  (fixture)

HUB = Signer(generate())
ENTS = {  # the first 17 characters of the credit code (the check character is computed), name, county
    "jx-hengda": ("91330402MA2B3C4D5", "恒达机械", "南湖区"),
    "jx-xiuzhou": ("91330411MA2B3C4D6", "秀洲精工", "秀洲区"),
    "jx-jiashan": ("91330421MA2B3C4D8", "嘉善电子", "嘉善县"),
    "jx-silent": ("91330481MA2B3C4D9", "海宁纺织", "海宁市"),
}


def code(ent: str) -> str:
    return ENTS[ent][0] + check_char(ENTS[ent][0])


def close(c: Collector, period: str, d1: tuple[int, int], d2: tuple[int, int]) -> dict[str, Any]:
    _, name, county = ENTS[c.enterprise]
    body = month_body(c.enterprise, c.workshop, period, d1, d2, enterprise_name=name, county=county)
    return c.append(body, body["period"]["closes"].replace("T00:00:00", "T00:00:41"))


@pytest.fixture
def city(pg_url: str, tmp_path: Path) -> Any:  # noqa: F811
    cols = [Collector("jx-hengda", "ws-machining"), Collector("jx-hengda", "ws-assembly"),
            Collector("jx-xiuzhou", "ws-1"), Collector("jx-jiashan", "ws-1"), Collector("jx-silent", "ws-1")]
    m, a, x, j, _ = cols
    close(m, "2026-10", (4, 7), (2, 6))
    close(m, "2026-11", (5, 7), (4, 6))   # 恒达 pooled: D1 8/11 = 72.7 % pass, D2 5/10 fail
    close(a, "2026-11", (3, 4), (1, 4))
    close(x, "2026-11", (2, 5), (3, 5))   # 秀洲: D1 40 % fail, D2 60 % pass
    close(j, "2026-11", (7, 10), (11, 20))  # 嘉善: exactly 70 % and 55 %: both pass
    lines = ["统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识"]
    lines += [f"{code(c.enterprise)},{ENTS[c.enterprise][1]},{ENTS[c.enterprise][2]},制造业,是,{c.public_key},"
              f"{c.enterprise}" for c in cols]
    with db.migrated(pg_url) as conn:
        enrol(conn, parse_csv("\n".join(lines) + "\n", "t.csv", JIAXING))
        for c in cols:
            for r in c.records:
                with conn.transaction():
                    assert ingest(conn, r, code(c.enterprise), HUB, "t").status == "accepted"
        # 秀洲 rewrites its November: an incident, its held figures stay
        real = x.records[-1]
        forged = sign_record(x.signer, enterprise="jx-xiuzhou", workshop="ws-1", seq=real["seq"], ts=real["ts"],
                             prev=real["prev"], body=month_body("jx-xiuzhou", "ws-1", "2026-11", (5, 5), (5, 5)))
        with conn.transaction():
            assert ingest(conn, forged, code("jx-xiuzhou"), HUB, "t").status == "incident"
        chains = [c.write_chain(tmp_path / f"{c.enterprise}-{c.workshop}.jsonl") for c in cols]
        yield conn, chains


def sheet(text: str) -> list[list[str]]:
    """The CSV as a spreadsheet reads it: UTF-8 with its BOM (which must be there: Excel needs it for Chinese)."""
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text.encode("utf-8").decode("utf-8-sig"))))


def pooled(files: list[Path], period: str, county: str | None = None) -> dict[str, Any]:
    args = [sys.executable, "-m", "collector.cli", "pool", "--period", period, "--json", *map(str, files)]
    if county:
        args += ["--county", county]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_bulletin_figures_equal_collector_pool_on_the_same_chains(city: Any) -> None:
    conn, chains = city
    b = build(conn, "2026-11", JIAXING)
    ref = pooled(chains, "2026-11")
    assert ref["enterprises"] == b["total"]["reported"] == 3
    for fid in ("D1", "D2"):
        mine, theirs = b["total"]["figures"][fid], ref["figures"][fid]
        for k in ("numerator", "denominator", "value", "passed", "enterprises_passing", "passing_share"):
            assert mine[k] == theirs[k], (fid, k)
    assert (b["total"]["figures"]["D1"]["numerator"], b["total"]["figures"]["D1"]["denominator"]) == (17, 26)
    assert b["total"]["figures"]["D1"]["enterprises_passing"] == 2  # 恒达 8/11 and 嘉善 7/10
    assert b["total"]["figures"]["D2"]["enterprises_passing"] == 2  # 秀洲 3/5 and 嘉善 11/20
    by = {c["name"]: c for c in b["counties"]}
    for county in ("南湖区", "秀洲区", "嘉善县"):
        ref_c = pooled(chains, "2026-11", county)
        for fid in ("D1", "D2"):
            for k in ("numerator", "denominator", "enterprises_passing", "passing_share"):
                assert by[county]["figures"][fid][k] == ref_c["figures"][fid][k], (county, fid, k)
    assert [c["name"] for c in b["counties"]] == JIAXING
    assert by["海宁市"]["enrolled"] == 1 and by["海宁市"]["reported"] == 0
    assert [e["name"] for e in by["海宁市"]["non_reporting"]] == ["海宁纺织"]
    assert by["桐乡市"]["enrolled"] == 0 and by["桐乡市"]["figures"] == {}
    assert [e["name"] for e in by["秀洲区"]["anomalies"]] == ["秀洲精工"]
    assert "rewritten history" in by["秀洲区"]["anomalies"][0]["incidents"][0]["reason"]
    assert by["秀洲区"]["figures"]["D1"]["numerator"] == 2  # the held figures, not the rewritten ones
    assert {e["name"] for e in b["total"]["non_reporting"]} == {"海宁纺织"}


def test_trend_holds_twelve_months_and_county_filter(city: Any) -> None:
    conn, _ = city
    b = build(conn, "2026-11", JIAXING)
    assert [p["period"] for p in b["trend"]] == [shift("2026-11", -i) for i in range(11, -1, -1)]
    assert b["trend"][0]["period"] == "2025-12"
    oct_, nov = b["trend"][-2], b["trend"][-1]
    assert oct_["city"]["D1"]["numerator"] == 4 and oct_["city"]["reported"] == 1
    assert nov["city"]["D1"]["numerator"] == 17 and nov["counties"]["南湖区"]["D2"]["denominator"] == 10
    assert b["trend"][0]["city"]["D1"] is None
    one = build(conn, "2026-11", JIAXING, county="南湖区")
    assert [c["name"] for c in one["counties"]] == ["南湖区"] and one["total"] is None
    assert one["counties"][0]["figures"]["D1"]["numerator"] == 8


def test_csv_and_html_in_both_languages(city: Any) -> None:
    conn, _ = city
    b = build(conn, "2026-11", JIAXING)
    rows = sheet(render(b, "csv"))
    assert rows[0][:4] == ["period", "县（市、区）", "登记企业数", "已报送"]
    total = rows[-1]
    assert total[1] == "嘉兴市" and total[4:6] == ["17", "26"] and total[7] == "2"
    nanhu = next(r for r in rows if r[1] == "南湖区")
    assert nanhu[8:10] == ["5", "10"] and nanhu[11] == "0"
    page = render(b, "html")
    assert "嘉兴市智能制造设备指标月度通报 · 2026-11" in page and "数据异常" in page and "未报送企业" in page
    assert "65.3 % (17/26)" in page  # truncated, never rounded up: 17/26 = 65.38 %
    en = render(b, "html", "en")
    assert "monthly bulletin" in en and "Not reported" in en and 'lang="en"' in en
    assert rows[0][1] != sheet(render(b, "csv", "en"))[0][1]


def test_period_parsing() -> None:
    assert parse_period("2026-11") == "2026-11"
    assert shift("2026-01", -1) == "2025-12" and shift("2026-11", 2) == "2027-01"
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_period("2026-13")


def test_an_enterprise_counting_simulated_devices_is_listed_and_never_pooled(pg_url: str,  # noqa: F811
                                                                             tmp_path: Path) -> None:
    real, sim = Collector("jx-hengda", "ws-1"), Collector("jx-jiashan", "ws-1")
    close(real, "2026-11", (5, 7), (4, 6))
    _, name, county = ENTS["jx-jiashan"]
    body = month_body("jx-jiashan", "ws-1", "2026-11", (9, 10), (9, 10), enterprise_name=name, county=county,
                      simulated=["cnc-07"], banner="含模拟设备，不可用于评价")  # what allow_simulated writes
    sim.append(body, "2026-12-04T00:00:41+08:00")
    lines = ["统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识"]
    lines += [f"{code(c.enterprise)},{ENTS[c.enterprise][1]},{ENTS[c.enterprise][2]},制造业,是,{c.public_key},"
              f"{c.enterprise}" for c in (real, sim)]
    with db.migrated(pg_url) as conn:
        enrol(conn, parse_csv("\n".join(lines) + "\n", "t.csv", JIAXING))
        for c in (real, sim):
            for r in c.records:
                with conn.transaction():
                    assert ingest(conn, r, code(c.enterprise), HUB, "t").status == "accepted"
        b = build(conn, "2026-11", JIAXING)
        demo = build(conn, "2026-11", JIAXING, count_simulated=True)  # a demo hub pools them, under the banner
    assert (demo["total"]["figures"]["D1"]["numerator"], demo["total"]["figures"]["D1"]["denominator"]) == (14, 17)
    assert demo["banner"] == "含模拟设备，不可用于评价" and [e["name"] for e in demo["total"]["simulated"]] == ["嘉善电子"]
    assert 'id="banner"' in render(demo, "html") and b["banner"] is None and 'id="banner"' not in render(b, "html")
    total = b["total"]
    assert (total["figures"]["D1"]["numerator"], total["figures"]["D1"]["denominator"]) == (5, 7)  # 恒达 alone
    assert total["figures"]["D1"]["enterprises_passing"] == 1 and total["reported"] == 2
    assert [e["name"] for e in total["simulated"]] == ["嘉善电子"] and total["non_reporting"] == []
    by = {c["name"]: c for c in b["counties"]}
    assert [e["id"] for e in by["嘉善县"]["simulated"]] == [code("jx-jiashan")] and by["嘉善县"]["figures"] == {}
    chains = [c.write_chain(tmp_path / f"{c.enterprise}.jsonl") for c in (real, sim)]
    ref = pooled(chains, "2026-11")  # `collector pool` sets the same enterprise aside
    assert ref["enterprises"] == 1 and ref["figures"]["D1"]["numerator"] == 5
    assert [e["enterprise"] for e in ref["simulated_not_pooled"]] == ["jx-jiashan"]
    page = render(b, "html")
    assert "<b>含模拟设备</b>：不计入汇总和达标家数" in page and 'class="simulated"' in page
    # the CSV carries the banner on every row (the last column), in both languages; none where it is not set
    header, *rows = sheet(render(demo, "csv"))
    assert header[-1] == "通报提示" and len(rows) == len(JIAXING) + 1
    assert {r[-1] for r in rows} == {"含模拟设备，不可用于评价"} and all(len(r) == len(header) for r in rows)
    header_en, *rows_en = sheet(render(demo, "csv", "en"))
    assert header_en[-1] == "banner"
    assert {r[-1] for r in rows_en} == {"含模拟设备，不可用于评价 · Includes simulated devices: not valid for assessment"}
    assert {r[-1] for r in sheet(render(b, "csv"))[1:]} == {""}
    jiashan = next(r for r in sheet(render(b, "csv")) if r[1] == "嘉善县")
    assert jiashan[-2] == code("jx-jiashan") and jiashan[-1] == ""  # listed, not pooled: no banner


def test_an_incident_is_on_the_bulletin_of_the_month_its_record_is_of(pg_url: str) -> None:  # noqa: F811
    """Incidents received in March 2027 about records of October and November 2026: each is on the bulletin of
    its record's month (the held summary it rewrites, the head's own date in site time) and, as before, on those
    of March and February (published in March); on no other month's."""
    hengda, xiuzhou = Collector("jx-hengda", "ws-1"), Collector("jx-xiuzhou", "ws-1")
    close(hengda, "2026-10", (5, 7), (4, 6))
    oct_x = close(xiuzhou, "2026-10", (2, 5), (3, 5))
    nov_x = close(xiuzhou, "2026-11", (3, 5), (3, 5))
    lines = ["统一社会信用代码,企业名称,县（市、区）,行业,行业骨干企业,公钥,采集器企业标识"]
    lines += [f"{code(c.enterprise)},{ENTS[c.enterprise][1]},{ENTS[c.enterprise][2]},制造业,是,{c.public_key},"
              f"{c.enterprise}" for c in (hengda, xiuzhou)]
    march = "2027-03-10T02:00:00.000Z"

    def forge(c: Collector, real: dict[str, Any], period: str) -> dict[str, Any]:
        return sign_record(c.signer, enterprise=c.enterprise, workshop=c.workshop, seq=real["seq"], ts=real["ts"],
                           prev=real["prev"], body=month_body(c.enterprise, c.workshop, period, (5, 5), (5, 5)))

    with db.migrated(pg_url) as conn:
        enrol(conn, parse_csv("\n".join(lines) + "\n", "t.csv", JIAXING))
        for c in (hengda, xiuzhou):
            for r in c.records:
                with conn.transaction():
                    assert ingest(conn, r, code(c.enterprise), HUB, "t", "2026-12-04T01:00:00.000Z").status == \
                        "accepted"
        sent = [  # (sender, message, what the hub says)
            # 秀洲 rewrites its October summary in full (seq 2): October's figures
            ("jx-xiuzhou", forge(xiuzhou, oct_x, "2026-10"), "rewritten history"),
            # and November's, as a head alone (seq 3, dated 2026-12-04): placed by the held November summary
            ("jx-xiuzhou", anchor_message(forge(xiuzhou, nov_x, "2026-11"), "head", march), "rewritten history"),
            # 恒达 anchors a record dated before its held October summary: 2026-09-30T17:00Z is October 1st in
            # site time; then another one dated in an ISO week date (2026-W42-4 is 15 October)
            ("jx-hengda", anchor_message(hengda.append({"kind": "register", "devices": []},
                                                       "2026-09-30T17:00:00Z"), "head", march), "back-dated"),
            ("jx-hengda", anchor_message(sign_record(hengda.signer, enterprise="jx-hengda", workshop="ws-1", seq=3,
                                                     ts="2026-W42-4T12:00:00+08:00", prev=hengda.records[1]["hash"],
                                                     body={"kind": "register", "devices": [1]}), "head", march),
             "back-dated"),
        ]
        for sender, msg, why in sent:
            with conn.transaction():
                out = ingest(conn, msg, code(sender), HUB, "t", march)
            assert out.status == "incident" and why in (out.reason or ""), out

        def listed(period: str) -> dict[str, list[tuple[int, list[str]]]]:
            b = build(conn, period, JIAXING)
            return {e["name"]: [(i["seq"], i["concerns"]) for i in e["incidents"]] for e in b["total"]["anomalies"]}

        both = {"恒达机械": [(3, ["2026-10"]), (3, ["2026-10"])],
                "秀洲精工": [(2, ["2026-10"]), (3, ["2026-11"])]}
        assert listed("2026-09") == {}
        assert listed("2026-10") == {"恒达机械": both["恒达机械"], "秀洲精工": both["秀洲精工"][:1]}
        assert listed("2026-11") == {"秀洲精工": both["秀洲精工"][1:]}  # not on December's: the head's own month
        for quiet in ("2026-12", "2027-01", "2027-04"):
            assert listed(quiet) == {}, quiet
        for received in ("2027-02", "2027-03"):  # received in March: on the bulletins published then
            assert listed(received) == both, received
        october = build(conn, "2026-10", JIAXING)
    assert [e["name"] for e in {c["name"]: c for c in october["counties"]}["秀洲区"]["anomalies"]] == ["秀洲精工"]
    assert (october["total"]["figures"]["D1"]["numerator"], october["total"]["figures"]["D1"]["denominator"]) == \
        (7, 12)  # the held figures (5/7 + 2/5), not the rewritten 5/5
    page = render(october, "html")
    assert "历史记录被改写（ws-1 #2，涉及 2026-10 的记录: " in page and "记录时间倒签（ws-1 #3，涉及 2026-10 的记录" in page
    assert "ws-1 #3, concerns records of 2026-10: " in render(october, "html", "en")
    assert sheet(render(october, "csv"))[-1][13] == f"{code('jx-hengda')};{code('jx-xiuzhou')}"


def test_the_csv_bulletin_command_carries_the_banner_into_the_file(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    """`collector hub bulletin --format csv` of a demo hub (count_simulated): the file a spreadsheet opens says
    含模拟设备，不可用于评价 on every row, stdout too, and stderr says it once; a hub that does not pool them says
    nothing."""
    import yaml

    sim = Collector("jx-jiashan", "ws-1")
    _, name, county = ENTS["jx-jiashan"]
    sim.append(month_body("jx-jiashan", "ws-1", "2026-11", (9, 10), (9, 10), enterprise_name=name, county=county,
                          simulated=["cnc-07"], banner="含模拟设备，不可用于评价"), "2026-12-04T00:00:41+08:00")
    with db.migrated(pg_url) as conn:
        enrol(conn, parse_csv("统一社会信用代码,企业名称,县（市、区）,公钥,采集器企业标识\n"
                              f"{code('jx-jiashan')},{name},{county},{sim.public_key},jx-jiashan\n", "t.csv", JIAXING))
        for r in sim.records:
            with conn.transaction():
                assert ingest(conn, r, code("jx-jiashan"), HUB, "t").status == "accepted"
    results = {}
    for demo in (True, False):
        cfg = tmp_path / f"hub-{demo}.yaml"
        cfg.write_text(yaml.safe_dump({"database": pg_url, "count_simulated": demo}), encoding="utf-8")
        out = tmp_path / f"bulletin-{demo}.csv"
        args = [sys.executable, "-m", "collector.cli", "hub", "bulletin", "-c", str(cfg), "--period", "2026-11",
                "--format", "csv", "--county", "嘉善县"]
        to_file = subprocess.run([*args, "-o", str(out)], capture_output=True, text=True, timeout=60)
        to_stdout = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert to_file.returncode == to_stdout.returncode == 0, to_file.stderr + to_stdout.stderr
        with open(out, encoding="utf-8-sig", newline="") as f:  # as a spreadsheet or pandas reads it
            rows = list(csv.DictReader(f))
        assert sheet(to_stdout.stdout) == sheet(out.read_text(encoding="utf-8"))
        results[demo] = rows, to_file.stderr, to_stdout.stderr
    rows, err_file, err_stdout = results[True]
    assert [(r["县（市、区）"], r["D1_numerator"], r["含模拟设备"], r["通报提示"]) for r in rows] == [
        ("嘉善县", "9", code("jx-jiashan"), "含模拟设备，不可用于评价")]
    assert err_stdout.strip() == "含模拟设备，不可用于评价" and err_file.strip() == "含模拟设备，不可用于评价"
    rows, err_file, err_stdout = results[False]
    assert [(r["D1_numerator"], r["含模拟设备"], r["通报提示"]) for r in rows] == [("", code("jx-jiashan"), "")]
    assert err_stdout == err_file == ""
