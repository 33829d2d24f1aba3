"""`collector hub …` as an operator meets it: bad config names the field, no database names the package, bad
input exits 2, and the hub's layering (it imports the evidence verification, never the engine)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from collector.hub.config import HubConfig
from tests.hubsupport import ROOT


def hub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", "hub", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def hubs(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """`collector hub` once per argument tuple, all at once (each is its own process; most of a run is the
    interpreter starting), the results in the order asked."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: hub(*args), commands))


def test_a_bad_hub_config_names_each_field(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({"mqtt": {"port": 0, "topic_prefix": "city/#", "pasword": "x"},
                                   "counties": [], "http": {"listen": "8322"}}))
    out = hub("bulletin", "-c", str(cfg), "--period", "2026-11")
    assert out.returncode == 2
    for want in ("mqtt.port", "mqtt.topic_prefix: topic_prefix must be a plain topic", "mqtt.pasword: unknown key",
                 "counties: counties must list each county once", "http.listen: listen must be HOST:PORT"):
        assert want in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_no_database_is_one_line_naming_the_package(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({"database": "postgresql://postgres:pw@127.0.0.1:1/hub"}))
    asked = (("migrate",), ("bulletin", "--period", "2026-11"), ("incidents",))
    commands = [(*args, "-c", str(cfg)) for args in asked]
    for out in hubs(*commands):
        assert out.returncode == 1, out
        assert "apt-get install postgresql" in out.stderr and "Traceback" not in out.stderr
        assert "pw" not in out.stderr.replace("postgresql", "")  # the password is never printed


def test_bad_period_county_and_csv_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({"database": "postgresql://postgres@127.0.0.1:1/hub"}))
    csv = tmp_path / "e.csv"
    csv.write_text("企业名称,县（市、区）\n恒达,南湖区\n", encoding="utf-8")
    period, county, enroll = hubs(("bulletin", "-c", str(cfg), "--period", "2026-13"),
                                  ("bulletin", "-c", str(cfg), "--period", "2026-11", "--county", "上海"),
                                  ("enroll", "-c", str(cfg), str(csv)))
    assert period.returncode == 2 and "YYYY-MM" in period.stderr
    assert county.returncode == 2 and "南湖区" in county.stderr
    assert enroll.returncode == 2 and "no column 统一社会信用代码" in enroll.stderr and "nothing enrolled" in enroll.stderr


def test_the_example_config_is_valid() -> None:
    data = yaml.safe_load((ROOT / "deploy/hub/hub.example.yaml").read_text(encoding="utf-8"))
    cfg = HubConfig.model_validate(data)
    assert cfg.mqtt.client_id == "hub-1" and len(cfg.counties) == 9


def test_the_hub_imports_the_evidence_verification_never_the_engine() -> None:
    code = ("import sys, collector.hub.commands, collector.hub.service, collector.hub.page, collector.hub.bulletin; "
            "print(' '.join(sorted(sys.modules)))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout.split())
    assert "collector.evidence.records" in mods
    banned = {m for m in mods if m in ("collector.engine", "collector.app", "collector.pipeline", "collector.outbox",
                                       "collector.delivery", "collector.sinks") or
              m.split(".")[0] in ("adapters", "asyncua", "pymodbus")}
    assert not banned, banned


def test_the_sender_is_the_level_after_the_prefix() -> None:
    from collector.hub.service import sender_of

    assert sender_of("cityhub", "cityhub/91330402MA2B3C4D53/evidence") == "91330402MA2B3C4D53"
    assert sender_of("cityhub", "cityhub/X/evidence/ws-1/indicators/monthly/2026-11") == "X"
    assert sender_of("city/jx", "city/jx/X/evidence/ws-1/evidence/head") == "X"
    for topic in ("cityhub/X/receipt", "cityhub/evidence", "other/X/evidence", "cityhub//evidence"):
        assert sender_of("cityhub", topic) is None, topic


def test_check_accepts_what_run_starts_and_names_an_open_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret")
    secret.chmod(0o644)
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({"mqtt": {"password_file": str(secret)}}))
    for cmd, out in zip(("check", "run"), hubs(("check", "-c", str(cfg)), ("run", "-c", str(cfg))), strict=True):
        assert out.returncode == 2, (cmd, out)
        assert f"mqtt.password_file: {secret} has mode 644; `chmod 600 {secret}`" in out.stderr
        assert "s3cret" not in out.stdout + out.stderr
    secret.chmod(0o600)
    out = hub("check", "-c", str(cfg))
    assert out.returncode == 0 and "OK: hub jiaxing-hub for 嘉兴市, 9 counties" in out.stdout
    assert "$share/hub/cityhub/+/evidence/#" in out.stdout
