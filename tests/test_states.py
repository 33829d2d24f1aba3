"""Machine states: the rule language, presets, counters, shifts, the ISO 22400-2 figures, the tracker."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from collector.config import ConfigError, parse_config
from collector.indicators import periods
from collector.model import Batch, Reading
from collector.states.expr import ExprError, compile_condition
from collector.states.figures import Tally, figures, tally
from collector.states.shifts import Shift, Shifts
from collector.states.summary import period_figures
from collector.states.tracker import StateTracker, counter_delta
from collector.status import StatusStore

TZ = "Asia/Shanghai"


def ev(text: str, values: dict[str, Any], changed: dict[str, float] | None = None, now: float = 100.0) -> bool:
    return compile_condition(text).evaluate(values, changed or {}, now)


# ------------------------------------------------------------------------------------------- the language


def test_comparisons_and_or_not_and_precedence() -> None:
    assert ev("machine_state == 1", {"machine_state": 1})
    assert not ev("machine_state == 1", {"machine_state": 2})
    assert ev("speed > 10 and not alarm", {"speed": 11.5, "alarm": False})
    assert not ev("speed > 10 and not alarm", {"speed": 11.5, "alarm": True})
    assert ev("a or b and c", {"a": True, "b": False, "c": False})  # and binds tighter than or
    assert not ev("(a or b) and c", {"a": True, "b": False, "c": False})
    assert ev('mode in ["AUTO", 2]', {"mode": 2}) and ev('mode in ["AUTO", 2]', {"mode": "AUTO"})
    assert not ev('mode in ["AUTO", 2]', {"mode": "MANUAL"})
    assert ev('channel_state != "running"', {"channel_state": "idle"})


def test_a_tag_without_a_good_value_makes_its_comparisons_false() -> None:
    assert not ev("machine_state == 1", {})
    assert not ev("machine_state != 1", {})
    assert not ev("alarm", {})
    assert ev("not alarm", {})  # explicitly negated: the author asked for it


def test_changed_within_a_window_of_the_counter() -> None:
    c = compile_condition("parts changed within 30s")
    assert c.tags == {"parts"} and c.windows == {"parts": {30.0}}
    assert c.evaluate({"parts": 5}, {"parts": 80.0}, 100.0)
    assert not c.evaluate({"parts": 5}, {"parts": 60.0}, 100.0)
    assert compile_condition("x changed within 2 min").windows == {"x": {120.0}}


@pytest.mark.parametrize("text, where", [
    ("machine_state = 1", "column 15"), ("machine_state ==", "expected a value"), ("(a or b", "')'"),
    ("a and", "end"), ("__import__('os')", "column"), ("a b", "unexpected 'b' at column 3"),
    ("x changed 30", "within"), ("", "empty"),
])
def test_bad_conditions_are_refused_naming_the_place(text: str, where: str) -> None:
    with pytest.raises(ExprError, match=None) as exc:
        compile_condition(text)
    assert where in str(exc.value)


def _cfg(states: dict[str, Any] | None = None, **root: Any) -> dict[str, Any]:
    dev: dict[str, Any] = {"id": "imm-01", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1502",
                           "tags": [{"name": "machine_state", "table": "holding_register", "address": 0},
                                    {"name": "shot_count", "table": "holding_register", "address": 1}]}
    if states is not None:
        dev["states"] = states
    return {"site": {"enterprise_id": "e"}, "devices": [dev], **root}


def test_check_names_the_rule_field_and_the_unknown_tag() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_cfg({"rules": {"running": "machine_state === 1", "fault": "alarm"}}))
    lines = exc.value.lines
    assert any(line.startswith("devices[0].states.rules.running: ") and "column 17" in line for line in lines), lines
    with pytest.raises(ConfigError) as exc:
        parse_config(_cfg({"rules": {"fault": "machine_stat == 2"}, "parts": "shots"}))
    text = "\n".join(exc.value.lines)
    assert "devices[0].states.rules.fault: no tag 'machine_stat' on this device (did you mean 'machine_state'?)" \
        in text
    assert "devices[0].states.parts: no tag 'shots'" in text
    with pytest.raises(ConfigError) as exc:
        parse_config(_cfg({"rules": {"runing": "machine_state == 1"}}))
    assert "devices[0].states.rules.runing" in exc.value.lines[0]


def test_a_good_config_parses_and_the_preset_is_picked_from_the_tag_names() -> None:
    cfg = parse_config(_cfg())
    t = StateTracker(cfg, StatusStore(Path(":memory:"), 300), 0.0)
    m = t.machines["imm-01"]
    assert m.source == "preset state_code" and m.counters == {"shot_count": "parts"}
    assert [s for s, _ in m.rules] == ["fault", "setup", "running"]
    cfg = parse_config(_cfg({"preset": "none"}))
    assert StateTracker(cfg, StatusStore(Path(":memory:"), 300), 0.0).machines == {}


# ------------------------------------------------------------------------------------------- counters


def test_a_counter_that_wraps_or_resets() -> None:
    assert counter_delta(10, 15, None) == (5, None)
    assert counter_delta(65530, 4, 65536) == (10, "wrap")  # uint16 wrapped: 6 to 65536, then 4
    assert counter_delta(100, 3, 65536) == (3, "reset")  # a small drop is a reset to zero, not a wrap
    assert counter_delta(65530, 4, None) == (4, "reset")  # without counter_wrap every drop is a reset


# ------------------------------------------------------------------------------------------- figures


def test_figures_match_the_hand_computed_worked_example() -> None:
    """The classic worked example (8 h shift, 60 min breaks as planned stops, 47 min of faults, 19 271 parts at
    an ideal 1.0 s, 423 scrap): A = 373/420, P = 19271/22380, Q = 18848/19271."""
    t = Tally(planned=480 * 60.0)
    t.seconds.update(running=373 * 60.0, planned_stop=60 * 60.0, fault=47 * 60.0)
    t.counts = {"parts": 19271.0, "scrap": 423.0}
    f = figures(t, 1.0, {"parts", "scrap"})
    assert f["planned_busy_time_s"] == 420 * 60
    assert f["availability"]["value"] == pytest.approx(373 / 420)
    assert f["performance"]["value"] == pytest.approx(19271 / 22380)
    assert f["quality"]["value"] == pytest.approx(18848 / 19271)
    assert f["oee"]["value"] == pytest.approx(0.7479, abs=1e-4)
    assert f["utilization"]["value"] == pytest.approx(373 / 480)
    assert f["good_quantity"] == 18848
    assert f["availability"]["denominator"] == "planned busy time observed"


def test_missing_counters_leave_the_figure_absent_with_the_reason() -> None:
    t = Tally(planned=3600.0)
    t.seconds.update(running=1800.0, idle=1800.0)
    f = figures(t, None, set())
    assert f["availability"]["value"] == 0.5
    assert f["performance"]["value"] is None and "ideal cycle time" in f["performance"]["reason"]
    assert f["quality"]["value"] is None and "no parts counter" in f["quality"]["reason"]
    assert f["oee"]["value"] is None and f["oee"]["reason"]
    t.uncounted = {"parts": 600.0}
    f = figures(t, 2.0, {"parts"})
    assert f["performance"]["value"] is None and "600 s of running time" in f["performance"]["reason"]


def test_collector_downtime_is_unknown_and_left_out_of_the_ratios() -> None:
    shift = Shift(dt.date(2026, 3, 2), 1, "08:00-09:00", 1000.0, 4600.0)
    segs = [("d", 1000.0, 1900.0, "running", None, None, None), ("d", 1900.0, 2800.0, "offline", None, None, None),
            # the collector was down from 2800 to 3700: no segment
            ("d", 3700.0, 4600.0, "running", None, None, None)]
    t = tally(segs, shift, 5000.0, ())
    assert t.seconds["unknown"] == 900 and t.seconds["offline"] == 900 and t.seconds["running"] == 1800
    f = figures(t, None, ())
    assert f["availability"]["value"] == pytest.approx(1800 / 2700)  # offline counts, unknown does not


def test_alarm_count_ignores_cuts_at_shift_boundaries() -> None:
    shift = Shift(dt.date(2026, 3, 2), 1, "x", 0.0, 100.0)
    segs = [("d", 0.0, 10.0, "fault", None, None, None), ("d", 10.0, 20.0, "fault", None, None, None),
            ("d", 20.0, 30.0, "running", None, None, None), ("d", 30.0, 40.0, "fault", None, None, None)]
    t = tally(segs, shift, 100.0, ())
    assert t.alarms == 2 and t.seconds["fault"] == 30


# ------------------------------------------------------------------------------------------- shifts


def test_a_night_shift_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    cal = parse_config({**_cfg(), "indicators": {"calendar": {"shifts": ["08:00-20:00", "20:00-08:00"],
                                                               "working_days": ["mon", "tue"]}}})
    shifts = Shifts(cal.indicators.calendar, TZ)
    mon = dt.date(2026, 3, 2)
    day_shift, night = shifts.of_day(mon)
    start = dt.datetime(2026, 3, 2, 20, 0, tzinfo=shifts.tz).timestamp()
    assert night.start == start and night.end == start + 12 * 3600 and night.day == mon
    assert day_shift.end == start
    # 02:00 on Tuesday is Monday's night shift; the boundaries include 20:00, midnight and 08:00
    two_am = start + 6 * 3600
    assert shifts.current(two_am) == night
    assert shifts.next_cut(start + 1) == start + 4 * 3600  # midnight cuts the segment (day of the evidence)
    assert shifts.next_cut(start + 4 * 3600) == start + 12 * 3600
    assert shifts.of_day(dt.date(2026, 3, 4)) == []  # a Wednesday is no working day here


def _batch(ts: float, **values: Any) -> Batch:
    return Batch("imm-01", 1, ts, [Reading("imm-01", k, v, None, "good", ts, ts) for k, v in values.items()])


def test_tracker_cuts_at_midnight_and_counts_parts_per_shift(tmp_path: Path) -> None:
    cfg = parse_config({**_cfg({"ideal_cycle_time": 10, "counter_wrap": 65536}),
                        "site": {"enterprise_id": "e", "timezone": TZ},
                        "indicators": {"calendar": {"shifts": ["20:00-08:00"], "working_days": ["mon"]}}})
    store = StatusStore(tmp_path / "status.db", 300)
    mon_20 = dt.datetime(2026, 3, 2, 20, 0, tzinfo=Shifts(None, TZ).tz).timestamp()
    t = StateTracker(cfg, store, mon_20)
    t.on_batch(_batch(mon_20, machine_state=1, shot_count=65000))
    t.on_batch(_batch(mon_20 + 3 * 3600, machine_state=1, shot_count=65500))  # 23:00
    t.on_batch(_batch(mon_20 + 5 * 3600, machine_state=0, shot_count=300))  # 01:00 Tue: wrapped, 336 more
    t.on_batch(_batch(mon_20 + 6 * 3600, machine_state=2, shot_count=300))  # 02:00 fault
    t.flush(mon_20 + 8 * 3600)  # 04:00: the collector stops here; 04:00-08:00 is unknown
    rows = store.machine_states(mon_20, mon_20 + 86400)
    assert [(r[1] - mon_20, r[2] - mon_20, r[3]) for r in rows] == [
        (0, 4 * 3600, "running"), (4 * 3600, 5 * 3600, "running"), (5 * 3600, 6 * 3600, "idle"),
        (6 * 3600, 8 * 3600, "fault")]
    p = periods.day(dt.date(2026, 3, 2), TZ)
    res = period_figures(cfg, store, p, mon_20 + 20 * 3600)
    f = res["devices"]["imm-01"]
    assert f["seconds"]["running"] == 5 * 3600 and f["seconds"]["unknown"] == 4 * 3600
    assert f["produced_quantity"] == 836
    assert f["availability"]["value"] == pytest.approx(5 / 8)
    assert f["performance"]["value"] == pytest.approx(836 * 10 / (5 * 3600))
    assert f["alarms"] == {"count": 1, "duration_s": 7200.0}
    assert len(f["shifts"]) == 1 and f["shifts"][0]["label"] == "20:00-08:00"
    # Tuesday has no shift of its own: the night belongs to Monday
    tue = period_figures(cfg, store, periods.day(dt.date(2026, 3, 3), TZ), mon_20 + 20 * 3600)
    assert tue["devices"]["imm-01"]["planned_operation_time_s"] == 0


def test_rules_are_evaluated_only_when_a_tag_they_read_changed(tmp_path: Path) -> None:
    cfg = parse_config(_cfg({"rules": {"running": "shot_count changed within 30s"}}))
    t = StateTracker(cfg, StatusStore(tmp_path / "s.db", 300), 0.0)
    m = t.machines["imm-01"]
    calls = []
    orig = m.evaluate

    def counted(now: float) -> str:
        calls.append(now)
        return orig(now)

    m.evaluate = counted  # type: ignore[method-assign]
    t.on_batch(_batch(1.0, shot_count=1, machine_state=5))
    t.on_batch(_batch(2.0, shot_count=1, machine_state=6))  # nothing the rule reads changed
    assert calls == [1.0] and m.segment.state == "running"
    t.on_batch(_batch(20.0, shot_count=1))
    t.on_batch(_batch(31.5, shot_count=1))  # the window ran out: evaluated without a change
    assert calls == [1.0, 31.5] and m.segment.state == "idle"


# ------------------------------------------------------------------------------------------- outputs


def _day_with_states(tmp_path: Path) -> tuple[Path, float]:
    """A config file and a status.db where imm-01 ran 6 h, idled 2 h and faulted 1 h of Monday's 08:00-17:00."""
    import yaml

    data = {**_cfg({"ideal_cycle_time": 30}), "state_dir": str(tmp_path / "state"),
            "site": {"enterprise_id": "e", "timezone": TZ},
            "indicators": {"calendar": {"shifts": ["08:00-17:00"]}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    cfg = parse_config(data)
    (tmp_path / "state").mkdir()
    store = StatusStore(tmp_path / "state" / "status.db", 300)
    at8 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=Shifts(None, TZ).tz).timestamp()
    t = StateTracker(cfg, store, at8)
    t.on_batch(_batch(at8, machine_state=1, shot_count=0))
    t.on_batch(_batch(at8 + 6 * 3600, machine_state=0, shot_count=600))
    t.on_batch(_batch(at8 + 8 * 3600, machine_state=2, shot_count=600))
    t.flush(at8 + 9 * 3600)
    store.close()
    return path, at8


def test_oee_command_prints_chinese_first_english_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from collector.cli import main

    path, at8 = _day_with_states(tmp_path)
    monkeypatch.setattr("time.time", lambda: at8 + 20 * 3600)
    assert main(["oee", "-c", str(path), "--period", "2026-03-02", "--devices"]) == 0
    out = capsys.readouterr().out
    assert "设备稼动率与OEE" in out and "稼动率" in out and "66.7 %" in out  # 6 h of 9 h
    assert "imm-01" in out and "故障 1.00 h" in out and "报警 1" in out
    assert "性能开动率: the parts counter" not in out
    assert main(["oee", "-c", str(path), "--period", "2026-03", "--lang", "en"]) == 0
    out = capsys.readouterr().out
    assert "Machine utilization and OEE" in out and "utilization" in out
    assert "no good counter tag configured" in out or "quality" in out
    assert main(["oee", "-c", str(path), "--period", "2026-03-02", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    f = res["devices"]["imm-01"]
    assert f["utilization"]["value"] == pytest.approx(6 / 9)
    assert f["performance"]["value"] == pytest.approx(600 * 30 / (6 * 3600))
    assert f["quality"]["value"] is None and "good counter" in f["quality"]["reason"]
    assert f["shifts"][0]["label"] == "08:00-17:00"
    assert main(["oee", "-c", str(path), "--period", "2026"]) == 2
    assert "--period" in capsys.readouterr().err


def test_monthly_report_has_the_appendix(tmp_path: Path) -> None:
    from collector.config import load_config
    from collector.states.appendix import machine_appendix

    path, at8 = _day_with_states(tmp_path)
    cfg = load_config(path)
    html_zh = machine_appendix(cfg, periods.month(2026, 3, TZ), at8 + 86400, "zh")
    assert "附录：设备稼动率与OEE" in html_zh and "<td>imm-01</td><td>66.7 %</td>" in html_zh
    assert "ISO 22400-2" in html_zh
    assert "Appendix: machine utilization and OEE" in machine_appendix(cfg, periods.month(2026, 3, TZ),
                                                                       at8 + 86400, "en")
    assert machine_appendix(cfg.model_copy(update={"state_dir": tmp_path / "none"}), periods.month(2026, 3, TZ),
                            at8, "zh") == ""


def test_time_in_state_survives_a_restart_and_the_gap_is_unknown(tmp_path: Path) -> None:
    """Two collector lives on one status.db: the first ran 0-100 s, the second from 400 s; 100-400 s is the
    collector's own downtime (unknown), not the machine's (offline)."""
    cfg = parse_config(_cfg())
    db = tmp_path / "status.db"
    t0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=Shifts(None, TZ).tz).timestamp()
    store = StatusStore(db, 300)
    first = StateTracker(cfg, store, t0)
    first.on_batch(_batch(t0, machine_state=1, shot_count=5))
    first.flush(t0 + 100)  # then the process dies: no stop, no later write
    store.close()
    store = StatusStore(db, 300)
    second = StateTracker(cfg, store, t0 + 400)  # offline until the first answer, then idle
    second.on_batch(_batch(t0 + 401, machine_state=0, shot_count=5))
    second.flush(t0 + 500)
    shift = Shift(dt.date(2026, 3, 2), 1, "x", t0, t0 + 500)
    t = tally(store.machine_states(t0, t0 + 500), shift, t0 + 500, ())
    assert t.seconds["running"] == 100 and t.seconds["unknown"] == 300
    assert t.seconds["offline"] == 1 and t.seconds["idle"] == 99
    store.close()


def test_a_reload_applies_new_rules_from_the_reload_on(tmp_path: Path) -> None:
    store = StatusStore(tmp_path / "status.db", 300)
    t = StateTracker(parse_config(_cfg({"rules": {"running": "machine_state == 1"}})), store, 0.0)
    t.on_batch(_batch(1.0, machine_state=5))
    assert t.machines["imm-01"].segment.state == "idle"
    t.reconfigure(parse_config(_cfg({"rules": {"running": "machine_state == 5"}})), ["imm-01"], now=10.0)
    t.on_batch(_batch(11.0, machine_state=5))
    assert t.machines["imm-01"].segment.state == "running"
    t.flush(20.0)
    assert [(r[1], r[2], r[3]) for r in store.machine_states(0, 100)] == [
        (0.0, 1.0, "offline"), (1.0, 10.0, "idle"), (10.0, 11.0, "offline"), (11.0, 20.0, "running")]
    t.reconfigure(parse_config(_cfg({"preset": "none"})), ["imm-01"], now=25.0)  # states off for it
    assert t.machines == {}
    assert store.machine_states(0, 100)[-1][1:4] == (11.0, 25.0, "running")


def test_a_fault_across_a_shift_change_is_one_alarm_of_the_shift_it_began_in(tmp_path: Path) -> None:
    cfg = parse_config({**_cfg(), "site": {"enterprise_id": "e", "timezone": TZ},
                        "indicators": {"calendar": {"shifts": ["08:00-12:00", "12:00-16:00"]}}})
    store = StatusStore(tmp_path / "status.db", 300)
    at8 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=Shifts(None, TZ).tz).timestamp()
    t = StateTracker(cfg, store, at8)
    t.on_batch(_batch(at8, machine_state=1))
    t.on_batch(_batch(at8 + 3.5 * 3600, machine_state=2))  # 11:30 fault ...
    t.on_batch(_batch(at8 + 4.5 * 3600, machine_state=1))  # ... until 12:30
    t.flush(at8 + 8 * 3600)
    res = period_figures(cfg, store, periods.day(dt.date(2026, 3, 2), TZ), at8 + 9 * 3600)
    f = res["devices"]["imm-01"]
    assert [s["alarms"] for s in f["shifts"]] == [{"count": 1, "duration_s": 1800.0},
                                                  {"count": 0, "duration_s": 1800.0}]
    assert f["alarms"] == {"count": 1, "duration_s": 3600.0}


def test_presets_for_euromap_modes_and_running_bits() -> None:
    from collector.states.presets import resolve

    src, rules, _ = resolve(None, {"machine_mode", "alarm"}) or ("", {}, None)
    assert src == "preset euromap"
    order = list(rules)
    values = {"machine_mode": 1, "alarm": False}

    def state(v: dict[str, Any]) -> str:
        return next((s for s in order if ev(rules[s], v)), "idle")

    assert state(values) == "running" and state({**values, "machine_mode": 4}) == "setup"
    assert state({**values, "alarm": True}) == "fault" and state({**values, "machine_mode": 0}) == "idle"
    src, rules, _ = resolve(None, {"motor_running"}) or ("", {}, None)
    assert src == "preset running_flag" and rules == {"running": "motor_running"}
    assert resolve(None, {"voltage_a", "energy_total"}) is None  # a power meter says no state


def test_the_shift_summary_of_an_ended_shift_is_final(tmp_path: Path) -> None:
    from collector.states.summary import shift_figures

    path, at8 = _day_with_states(tmp_path)
    from collector.config import load_config

    cfg = load_config(path)
    store = StatusStore(tmp_path / "state" / "status.db", 300)
    running = shift_figures(cfg, store, at8 + 3600)
    ended = shift_figures(cfg, store, at8 + 10 * 3600)
    assert running is not None and ended is not None
    assert running["final"] is False and running["devices"]["imm-01"]["planned_operation_time_s"] == 3600
    assert ended["final"] is True and ended["key"] == "2026-03-02#1"
    assert ended["devices"]["imm-01"]["utilization"]["value"] == pytest.approx(6 / 9)
    store.close()
