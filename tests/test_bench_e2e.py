"""bench/e2e.py's decisions on the peer: a measured window that delivered nothing says why and is measured
again with a fresh peer process, a bounded number of times; the report then shows the reason, not a bare 0."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def e2e() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "bench" / "e2e.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_e2e"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(e2e: ModuleType, rate: float, cpu: float = 0.9) -> object:
    return e2e.Run(rate=rate, cpu=cpu, rss=120.0, p50=None, p99=None)


def test_a_window_with_readings_is_kept(e2e: ModuleType) -> None:
    assert e2e.empty_window(run(e2e, 3315.0), True, ["ERROR old"]) is None
    assert not e2e.retry_peer(None, 0)


def test_an_empty_window_says_why(e2e: ModuleType) -> None:
    gone = e2e.empty_window(run(e2e, 0.0), False, ["ERROR Connection refused"])
    assert gone == "the peer process exited; its last error: ERROR Connection refused"
    failing = e2e.empty_window(run(e2e, 0.0), True, ["x ERROR first", "y ERROR Modbus timeout on bench-017"])
    assert failing == "no readings reached the broker; the peer's last error: y ERROR Modbus timeout on bench-017"
    busy = e2e.empty_window(run(e2e, 0.0, cpu=0.96), True, [])
    assert busy == ("no readings reached the broker and the peer logged no error; it was busy (0.96 cores) "
                    "during the window")
    assert "idle (0.02 cores)" in e2e.empty_window(run(e2e, 0.0, cpu=0.02), True, [])


def test_an_empty_window_is_measured_again_at_most_twice(e2e: ModuleType) -> None:
    reason = e2e.empty_window(run(e2e, 0.0), True, [])
    assert [e2e.retry_peer(reason, n) for n in range(4)] == [True, True, False, False]
    assert e2e.PEER_RETRIES == 2


def test_the_peer_log_errors_come_from_its_log_folder_and_stdout(e2e: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "connector.log").write_text("INFO fine\n2026 ERROR - Modbus: bench-003 timed out\n")
    (tmp_path / "logs" / "service.log").write_text("INFO up\n")
    errors = e2e.peer_errors(tmp_path, "started\nTraceback (most recent call last):\n")
    assert errors == ["2026 ERROR - Modbus: bench-003 timed out", "Traceback (most recent call last):"]


def test_the_report_names_a_peer_that_delivered_nothing(e2e: ModuleType) -> None:
    ours = e2e.Row("1", "shopfloor-collector", "contiguous", 0.05, 400_000, [run(e2e, 333_423.0, 0.82)])
    peer = e2e.Row("6", "ThingsBoard IoT Gateway", "contiguous", 1.0, 20_000,
                   [run(e2e, 0.0), run(e2e, 0.0), run(e2e, 3315.0)])
    text = e2e.comparison([ours, peer])
    assert "| contiguous | 333,423 at 0.82 | 0: the peer delivered nothing" in text, text


def test_the_latency_verdict_counts_the_opc_ua_rows(e2e: ModuleType) -> None:
    def row(scenario: str, mode: str, rate: float, offered: float, p99: float) -> object:
        return e2e.Row(scenario, "shopfloor-collector", mode, 0.1, offered,
                       [e2e.Run(rate=rate, cpu=0.3, rss=96.0, p50=100.0, p99=p99)])

    bench = SimpleNamespace(rows=[row("1", "sparse, max_gap 20", 192_771, 200_000, 131),
                                  row("3", "OPC UA subscribe", 38_401, 40_000, 427),
                                  row("3", "OPC UA poll", 37_373, 40_000, 380)])
    text = e2e.targets(bench)
    assert "| p99 read-to-publish ≤ 250 ms below saturation (Modbus) | worst 131 ms (sparse, max_gap 20, 100 ms) " \
           "| met |" in text
    assert "| p99 read-to-publish ≤ 250 ms below saturation (OPC UA) | worst 427 ms (OPC UA subscribe, 100 ms) " \
           "| missed |" in text


def test_the_memory_verdict_has_a_row_for_flat_and_template_configs(e2e: ModuleType) -> None:
    bench = SimpleNamespace(rows=[], memory={20_000: [96.0, 98.0, 99.0]}, memory_flat={20_000: [120.0, 151.0, 160.0]})
    text = e2e.targets(bench)
    assert "| RSS ≤ 150 MB with 20 k tags (one template) | 98 MB | met |" in text, text
    assert "| RSS ≤ 150 MB with 20 k tags (flat: tags listed per device) | 151 MB | missed |" in text, text


def test_the_peer_is_installed_from_a_full_pin_set(e2e: ModuleType, tmp_path: Path) -> None:
    """Unpinned dependencies could let two runs measure different peers: every line of the file pins one version."""
    lines = [x for x in e2e.PEER_REQUIREMENTS.read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert all(x.count("==") == 1 for x in lines), lines
    pins = e2e.peer_pins()
    assert len(pins) == len(lines) > 20
    assert pins["thingsboard-gateway"] == "3.8.5"
    assert pins["pymodbus"] == "3.9.2"
    assert pins["tb-mqtt-client"] == "1.13.13"
    req = tmp_path / "req.txt"
    req.write_text("# comment\nTyping_Extensions==4.16.0  # trailing\n\nPyYAML==6.0.4\n")
    assert e2e.peer_pins(req) == {"typing-extensions": "4.16.0", "pyyaml": "6.0.4"}


def test_the_peer_is_stepped_from_slow_and_measured_over_whole_cycles(e2e: ModuleType) -> None:
    """Past its capacity the peer's polls pile up and it delivers less, and it publishes a whole cycle at once:
    its steps start where it keeps up, and a window spans several cycles, not one burst of 20,000 readings."""
    full, quick = e2e.Plan.make(False), e2e.Plan.make(True)
    assert full.peer_intervals == tuple(sorted(full.peer_intervals, reverse=True))
    assert full.peer_intervals[0] >= 4.0 and full.peer_intervals[-1] <= 0.5
    assert e2e.peer_window(full, 4.0) == 24.0
    assert e2e.peer_window(full, 1.0) == 8.0  # never shorter than the plan's window
    assert e2e.peer_window(quick, quick.peer_intervals[0]) == 6.0


def test_the_static_report_text_is_the_one_in_the_doc(e2e: ModuleType) -> None:
    """`make bench` writes these sections into docs/BENCHMARKS.md as they are: an edit to one alone is lost."""
    doc = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    for text in (e2e.PIPELINING, e2e.LEGACY):
        assert text in doc, text[:80]


def test_the_peer_config_sets_no_rate_limits(e2e: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The package default says "DEFAULT_*", which resolves by host name: the bench sets none outright."""
    import json

    pkg = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "thingsboard_gateway" / "config"
    pkg.mkdir(parents=True)
    defaults = {"thingsboard": {"host": "thingsboard.cloud", "statistics": {"enable": True},
                                "rateLimits": "DEFAULT_TELEMETRY_RATE_LIMIT",
                                "deviceDpRateLimits": "DEFAULT_TELEMETRY_DP_RATE_LIMIT"},
                "storage": {}, "connectors": []}
    (pkg / "tb_gateway.json").write_text(json.dumps(defaults))
    (pkg / "logs.json").write_text(json.dumps({"loggers": {}, "handlers": {}}))
    monkeypatch.setattr(e2e, "PEER_VENV", tmp_path / "venv")
    conf = e2e.peer_config(tmp_path / "peer", e2e.Fleet("contiguous", 2, 4, ports=[20001, 20002]), 2.0, 1883)
    tb = json.loads((conf / "tb_gateway.json").read_text())["thingsboard"]
    keys = ("rateLimits", "dpRateLimits", "messagesRateLimits", "deviceMessagesRateLimits", "deviceRateLimits",
            "deviceDpRateLimits")
    assert {k: tb[k] for k in keys} == dict.fromkeys(keys, "0:0,")
    slaves = json.loads((conf / "modbus.json").read_text())["master"]["slaves"]
    assert [s["pollPeriod"] for s in slaves] == [2000, 2000]
