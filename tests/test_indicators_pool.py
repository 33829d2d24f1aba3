"""County/city figures (`collector pool`): enterprises' closed months pooled from their evidence chains, never
an average of rates; an enterprise with several collectors counts once; an edited chain is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.cli import main
from collector.config import CollectorConfig, IndicatorConfig, SiteConfig
from collector.evidence import keys
from collector.indicators.figures import compute
from collector.indicators.monthly import chain_path, ensure_chained
from collector.indicators.report import report_data
from tests.test_indicators_monthly import AFTER_CLOSE, NOV, H, History, asset, t


def collector_month(tmp_path: Path, enterprise: str, workshop: str, county: str, networked: int, devices: int,
                    cnc: int) -> Path:
    """One collector's state dir with a chained November: `networked` of `devices` digital machines delivered
    all month; the first `cnc` are CNC."""
    state = tmp_path / f"{enterprise}-{workshop}"
    state.mkdir()
    hist = History(state)
    hist.up(t(1), t(30, 23))
    assets = [asset(i, cnc=i < cnc, workshop=workshop) for i in range(devices)]
    for i in range(networked):
        hist.good(f"d{i}", t(1), t(30, 23))
    cfg = CollectorConfig(site=SiteConfig(enterprise_id=enterprise, workshop=workshop, county=county),
                          indicators=IndicatorConfig(bucket=H))
    result = compute(cfg, assets, hist.store, NOV, AFTER_CLOSE)
    assert result.closed
    assert ensure_chained(result, state, keys.init(state)[0]) is not None
    (state / "report-2026-11.json").write_text(json.dumps(report_data(result), ensure_ascii=False))
    return chain_path(state)


@pytest.fixture
def chains(tmp_path: Path) -> dict[str, Path]:
    return {
        # e1: 11 of 20 networked (55 %: passes), 15 of 20 CNC (75 %: passes)
        "e1": collector_month(tmp_path, "e1", "ws1", "yuhang", 11, 20, 15),
        # e2 runs two collectors: 1 of 5 and 3 of 5 -> 4 of 10 (fails), CNC 6 of 10 (fails)
        "e2a": collector_month(tmp_path, "e2", "ws1", "yuhang", 1, 5, 3),
        "e2b": collector_month(tmp_path, "e2", "ws2", "yuhang", 3, 5, 3),
        # e3 is in another county
        "e3": collector_month(tmp_path, "e3", "main", "xiaoshan", 10, 10, 10),
    }


def pooled(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["pool", "--period", "2026-11", "--json", *argv])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out else {})


def test_pooled_figures_are_sums_and_an_enterprise_with_two_collectors_counts_once(
        chains: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = pooled(capsys, "--county", "yuhang", *map(str, chains.values()))
    assert code == 0
    figs = out["figures"]  # type: ignore[index]
    d2, d1 = figs["D2"], figs["D1"]  # type: ignore[index]
    # 11 + 1 + 3 networked of 20 + 5 + 5: 15/30 = 50 %, not the average of 55 % and 40 %
    assert (d2["numerator"], d2["denominator"], d2["passed"]) == (15, 30, False)
    assert (d1["numerator"], d1["denominator"]) == (21, 30)
    assert out["enterprises"] == 2 and d2["enterprises_passing"] == 1 and d2["passing_share"] == 0.5
    e2 = next(e for e in out["by_enterprise"] if e["enterprise"] == "e2")  # type: ignore[union-attr]
    assert e2["collectors"] == ["ws1", "ws2"] and e2["verified"] is True
    assert (e2["figures"]["D2"]["numerator"], e2["figures"]["D2"]["denominator"]) == (4, 10)

    code, out = pooled(capsys, *map(str, chains.values()))  # the city: every county
    assert code == 0 and out["enterprises"] == 3
    assert (out["figures"]["D2"]["numerator"], out["figures"]["D2"]["denominator"]) == (25, 40)  # type: ignore[index]


def test_the_table_names_the_figures_in_chinese(chains: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pool", "--period", "2026-11", *map(str, chains.values())]) == 0
    out = capsys.readouterr().out
    assert "数字化设备联网率" in out and "装备数控化率" in out
    assert "3 enterprise(s), 4 collector(s)" in out and "chain verified" in out


def test_an_edited_chain_is_refused_and_named(chains: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = chains["e2b"]
    raw = path.read_bytes()
    edited = raw.replace(b'"numerator":3', b'"numerator":5', 1)  # e2's second collector: 3 -> 5 networked
    assert edited != raw
    path.write_bytes(edited)
    assert main(["pool", "--period", "2026-11", *map(str, chains.values())]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert captured.out == ""  # no figures at all
    assert f"{path}: the evidence chain is BROKEN at record 2" in err and "Not pooled" in err


def test_a_report_json_counts_but_is_marked_unverified_and_a_chain_copy_wins(
        chains: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report = chains["e3"].parent / "report-2026-11.json"
    code, out = pooled(capsys, str(report), str(chains["e1"]))
    assert code == 0 and out["enterprises"] == 2
    e3 = next(e for e in out["by_enterprise"] if e["enterprise"] == "e3")  # type: ignore[union-attr]
    assert e3["verified"] is False
    code, out = pooled(capsys, str(report), str(chains["e3"]))  # the same month twice: counted once, verified
    assert out["enterprises"] == 1 and out["by_enterprise"][0]["verified"] is True  # type: ignore[index]
    assert out["figures"]["D2"]["denominator"] == 10  # type: ignore[index]
    assert main(["pool", "--period", "2026-10", str(chains["e1"])]) == 1  # no closed October anywhere
