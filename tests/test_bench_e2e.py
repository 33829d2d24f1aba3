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
