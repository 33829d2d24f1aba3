"""Signed evidence chains (collector/evidence/): keys, `collector verify --key/--fingerprint`, rotation, chains of
older versions, and the forgeries an assessor must catch, each named by record and reason."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.cli import main
from collector.evidence import keys
from collector.evidence.canonical import GENESIS, canonical, record_hash, signed_bytes
from collector.evidence.records import anchor_message, sign_record, verify_anchor
from collector.indicators import chain

ROOT = Path(__file__).resolve().parents[1]
IDS = {"enterprise": "e1", "workshop": "main"}


def month_body(label: str, d2: int) -> dict[str, Any]:
    y, m = map(int, label.split("-"))
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return {"kind": "monthly_summary", "enterprise": "e1", "collector_workshop": "main",
            "period": {"label": label, "closes": f"{ny}-{nm:02d}-04T00:00:00+08:00"},
            "figures": {"D2": {"numerator": d2, "denominator": 6}}}


def three_months(tmp_path: Path) -> tuple[Path, keys.Signer]:
    """A chain signed by this state dir's key: the key record, then 2026-01 … 2026-03 (closed long ago)."""
    signer, _ = keys.init(tmp_path)
    path = tmp_path / chain.CHAIN_FILE
    for i, label in enumerate(("2026-01", "2026-02", "2026-03")):
        chain.append(path, month_body(label, 3 + i), signer, **IDS, now=1_776_000_000 + i * 86400)
    return path, signer


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_bytes().splitlines()]


def write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(canonical(r) + b"\n" for r in records))


def relink(records: list[dict[str, Any]], start: int, signer: keys.Signer | None = None) -> None:
    """What a forger does: renumber, recompute prev and hash from `start` on (and re-sign, given a key)."""
    for i in range(start, len(records)):
        r = records[i]
        r["seq"] = i + 1
        r["prev"] = records[i - 1]["hash"] if i else GENESIS
        if signer is not None:
            r["key"] = signer.fingerprint
        r["hash"] = record_hash(r)
        if signer is not None:
            r["sig"] = signer.sign(signed_bytes(r))


def verify_cli(capsys: pytest.CaptureFixture[str], path: Path, *who: str) -> tuple[int, str]:
    code = main(["verify", str(path), *who])
    return code, capsys.readouterr().out


def enrolments(state: Path, signer: keys.Signer) -> list[tuple[str, str]]:
    return [("--key", str(state / keys.PUBLIC_FILE)), ("--key", keys.public_b64(signer.public)),
            ("--fingerprint", keys.show_fingerprint(signer.fingerprint))]


def test_a_signed_chain_verifies_against_its_enrolled_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, signer = three_months(tmp_path)
    recs = lines_of(path)
    assert [r["body"]["kind"] for r in recs] == ["key", "monthly_summary", "monthly_summary", "monthly_summary"]
    assert {r["key"] for r in recs} == {signer.fingerprint} and all(r["v"] == 2 and r["sig"] for r in recs)
    for who in enrolments(tmp_path, signer):
        code, out = verify_cli(capsys, path, *who)
        assert code == 0 and "OK, 4 record(s)" in out and keys.show_fingerprint(signer.fingerprint) in out, out


def test_recomputed_hashes_fail_at_the_edited_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, signer = three_months(tmp_path)
    recs = lines_of(path)
    recs[2]["body"]["figures"]["D2"]["numerator"] = 6  # February: 4 -> 6 networked, every hash recomputed after it
    relink(recs, 2)
    write(path, recs)
    for who in [*enrolments(tmp_path, signer), ()]:
        code, out = verify_cli(capsys, path, *who)
        assert code == 1 and "BROKEN at record 3 (seq 3)" in out and "signature does not verify" in out, out


def test_a_chain_re_signed_with_another_key_fails_against_the_enrolled_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, signer = three_months(tmp_path)
    forger = keys.Signer(keys.generate())
    recs = lines_of(path)
    recs[0]["body"] = {"kind": "key", "public_key": keys.public_b64(forger.public),
                       "fingerprint": forger.fingerprint, "replaces": None}
    recs[2]["body"]["figures"]["D2"]["numerator"] = 6
    relink(recs, 0, forger)
    write(path, recs)
    assert main(["verify", str(path)]) == 0  # consistent in itself: only the enrolled key tells
    capsys.readouterr()
    for who in enrolments(tmp_path, signer):
        code, out = verify_cli(capsys, path, *who)
        assert code == 1 and "BROKEN at record 1 (seq 1)" in out, out
        assert f"signed by key {keys.show_fingerprint(forger.fingerprint)}, not by the enrolled key" in out


def test_a_removed_record_fails_even_when_the_rest_is_relinked(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path, signer = three_months(tmp_path)
    recs = lines_of(path)
    write(path, recs[:2] + recs[3:])  # February removed
    for who in enrolments(tmp_path, signer):
        code, out = verify_cli(capsys, path, *who)
        assert code == 1 and "BROKEN at record 3 (seq 4)" in out and "removed" in out, out
    rest = recs[:2] + recs[3:]
    relink(rest, 2)  # renumbered and rehashed, but the forger has no key
    write(path, rest)
    for who in enrolments(tmp_path, signer):
        code, out = verify_cli(capsys, path, *who)
        assert code == 1 and "BROKEN at record 3 (seq 3)" in out and "signature does not verify" in out, out


def test_a_back_dated_record_fails_even_signed_with_the_right_key(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path, signer = three_months(tmp_path)
    recs = lines_of(path)
    # the keeper (who holds the key) inserts a record dated before the one it follows
    forged = sign_record(signer, **IDS, seq=0, ts="2026-04-01T00:00:00Z", prev="", body=month_body("2025-12", 6))
    recs.insert(2, forged)
    relink(recs, 2, signer)
    write(path, recs)
    for who in enrolments(tmp_path, signer):
        code, out = verify_cli(capsys, path, *who)
        assert code == 1 and "BROKEN at record 3 (seq 3)" in out and "back-dated" in out, out
    # a month summary dated before its month closed is back-dated too
    recs = lines_of(path)[:2]
    recs.append(sign_record(signer, **IDS, seq=3, ts="2026-04-20T00:00:00Z", prev=recs[1]["hash"],
                            body=month_body("2026-04", 6)))
    write(path, recs)
    code, out = verify_cli(capsys, path, "--fingerprint", signer.fingerprint)
    assert code == 1 and "BROKEN at record 3" in out and "before its period closes" in out, out


def test_rotation_verifies_across_the_introduced_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"site": {"enterprise_id": "e1"}, "state_dir": str(tmp_path)}), encoding="utf-8")
    path, old = three_months(tmp_path)
    old_pub = tmp_path / "old.pub"
    shutil.copy(tmp_path / keys.PUBLIC_FILE, old_pub)
    assert main(["keys", "rotate", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    new = keys.load(tmp_path)
    assert new is not None and new.fingerprint != old.fingerprint
    assert keys.show_fingerprint(new.fingerprint) in out
    kept = tmp_path / f"evidence-key.{old.fingerprint}.pem"
    assert kept.stat().st_mode & 0o777 == 0o600 and (tmp_path / keys.PRIVATE_FILE).stat().st_mode & 0o777 == 0o600
    chain.append(path, month_body("2026-04", 2), new, **IDS)
    recs = lines_of(path)
    assert recs[4]["body"]["kind"] == "key" and recs[4]["key"] == old.fingerprint  # introduced by the old key
    assert recs[4]["body"]["replaces"] == old.fingerprint and recs[5]["key"] == new.fingerprint
    for who in (("--key", str(old_pub)), ("--key", str(tmp_path / keys.PUBLIC_FILE)),
                ("--fingerprint", old.fingerprint), ("--fingerprint", keys.show_fingerprint(new.fingerprint))):
        code, text = verify_cli(capsys, path, *who)
        assert code == 0 and "OK, 6 record(s)" in text, (who, text)
    # after the rotation, a record signed by the old key is refused, and the collector's old key cannot append
    with pytest.raises(chain.ChainKeyError, match="restore evidence-key.pem"):
        chain.append(path, month_body("2026-05", 2), old, **IDS)
    recs.append(sign_record(old, **IDS, seq=7, ts=recs[-1]["ts"], prev=recs[-1]["hash"],
                            body=month_body("2026-05", 2)))
    write(path, recs)
    code, text = verify_cli(capsys, path, "--fingerprint", old.fingerprint)
    assert code == 1 and "BROKEN at record 7" in text and "the chain's key here is" in text, text
    # a key introduced but never used vouches for nothing
    write(path, recs[:5])
    code, text = verify_cli(capsys, path, "--fingerprint", new.fingerprint)
    assert code == 1 and "BROKEN at record 5" in text and "signed no record" in text, text


def test_a_chain_of_an_older_version_is_continued_signed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / chain.CHAIN_FILE
    legacy: list[dict[str, Any]] = []
    for i, label in enumerate(("2025-10", "2025-11")):  # the v1 format: no key, no signature
        r: dict[str, Any] = {"seq": i + 1, "ts": f"2025-12-0{5 + i}T00:00:00Z",
                             "prev": legacy[-1]["hash"] if legacy else GENESIS, "body": month_body(label, 4)}
        r["hash"] = record_hash(r)
        legacy.append(r)
    write(path, legacy)
    signer, _ = keys.init(tmp_path)
    code, out = verify_cli(capsys, path)
    assert code == 0 and "unsigned" in out
    code, out = verify_cli(capsys, path, "--fingerprint", signer.fingerprint)
    assert code == 1 and "no record is signed" in out
    chain.append(path, month_body("2025-12", 5), signer, **IDS)
    recs = lines_of(path)
    assert [r.get("v") for r in recs] == [None, None, 2, 2] and recs[2]["body"]["kind"] == "key"
    assert recs[2]["prev"] == legacy[1]["hash"]  # the first signed record commits to the unsigned ones
    code, out = verify_cli(capsys, path, "--fingerprint", signer.fingerprint)
    assert code == 0 and "records 1–2 are unsigned" in out, out
    # an unsigned record after signing began is refused (inserted, or stripped of its signature)
    stripped: dict[str, Any] = {"seq": 5, "ts": recs[-1]["ts"], "prev": recs[-1]["hash"],
                                "body": month_body("2026-01", 6)}
    stripped["hash"] = record_hash(stripped)
    write(path, [*recs, stripped])
    code, out = verify_cli(capsys, path)
    assert code == 1 and "BROKEN at record 5" in out and "unsigned, after signing began" in out, out
    recs[0]["body"]["figures"]["D2"]["numerator"] = 6  # editing an old record breaks the signed link after it
    relink(recs, 0)
    write(path, recs)
    code, out = verify_cli(capsys, path, "--fingerprint", signer.fingerprint)
    assert code == 1 and "BROKEN at record 3" in out and "signature does not verify" in out, out


def test_keys_init_is_0600_and_the_private_key_is_in_no_output_or_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from collector.app import Collector
    from collector.config import parse_config

    data = yaml.safe_load((ROOT / "config/demo.yaml").read_text(encoding="utf-8"))
    data["state_dir"] = str(tmp_path / "state")
    cfg_path = tmp_path / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    assert main(["keys", "show", "-c", str(cfg_path)]) == 1  # none yet
    assert main(["keys", "init", "-c", str(cfg_path)]) == 0
    assert main(["keys", "init", "-c", str(cfg_path)]) == 0  # idempotent: the same key
    assert main(["keys", "show", "-c", str(cfg_path)]) == 0
    state = tmp_path / "state"
    pem = state / keys.PRIVATE_FILE
    assert pem.stat().st_mode & 0o777 == 0o600
    signer = keys.load(state)
    assert signer is not None
    collector = Collector(parse_config(data))  # `run` logs the key as its fingerprint only
    collector.outbox.close()
    collector.store.close()
    out, err = capsys.readouterr()
    text = out + err + caplog.text + repr(signer)
    fp = keys.show_fingerprint(signer.fingerprint)
    assert out.count(f"fingerprint: {fp}") == 3 and f"fingerprint={fp}" in caplog.text
    from cryptography.hazmat.primitives import serialization
    raw = signer.key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
    pem_body = "".join(pem.read_text().splitlines()[1:-1])
    for secret in (raw.hex(), base64.b64encode(raw).decode(), pem_body, pem_body[:24]):
        assert secret not in text
    # a key file others can read is refused, naming the fix
    pem.chmod(0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load(state)


def test_an_anchor_message_verifies_alone_with_the_public_key(tmp_path: Path) -> None:
    path, signer = three_months(tmp_path)
    head = lines_of(path)[-1]
    msg = json.loads(json.dumps(anchor_message(head, "month_close", "2026-04-04T00:01:00Z")))
    assert "body" not in msg and msg["enterprise"] == "e1" and msg["seq"] == 4
    pub = keys.load_public(str(tmp_path / keys.PUBLIC_FILE))
    assert verify_anchor(msg, pub) is None
    assert "not" in (verify_anchor(msg, keys.Signer(keys.generate()).public) or "")
    for field, value in (("seq", 5), ("hash", "0" * 64), ("enterprise", "e2"), ("ts", "2026-04-05T00:00:00Z")):
        assert verify_anchor({**msg, field: value}, pub) == "the signature does not verify (forged or edited)"
    assert verify_anchor({k: v for k, v in msg.items() if k != "sig"}, pub) == "missing sig"


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed (Debian package `openssl`)")
def test_openssl_verifies_a_record_signature(tmp_path: Path) -> None:
    """An implementation that is not ours agrees on the key file and the signature."""
    path, _ = three_months(tmp_path)
    head = lines_of(path)[-1]
    (tmp_path / "msg").write_bytes(signed_bytes(head))
    (tmp_path / "sig").write_bytes(base64.b64decode(head["sig"]))
    ok = subprocess.run([OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / keys.PUBLIC_FILE),
                         "-rawin", "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stdout + ok.stderr
    (tmp_path / "msg").write_bytes(signed_bytes({**head, "seq": 5}))
    bad = subprocess.run([OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / keys.PUBLIC_FILE),
                          "-rawin", "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig")],
                         capture_output=True, text=True)
    assert bad.returncode != 0


def test_verify_anchor_catches_a_chain_cut_short_or_rewritten_by_its_keeper(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, signer = three_months(tmp_path)
    recs = lines_of(path)
    saved = tmp_path / "heads.jsonl"  # what a subscriber of the evidence topic kept
    saved.write_text(json.dumps(anchor_message(recs[3], "month_close", "2026-04-04T00:01:00Z")) + "\n",
                     encoding="utf-8")
    fp = keys.show_fingerprint(signer.fingerprint)
    code, out = verify_cli(capsys, path, "--fingerprint", fp, "--anchor", str(saved))
    assert code == 0 and "anchored head seq 4 is in the chain" in out and "1 of 1 anchor(s) match" in out, out
    write(path, recs[:3])  # March cut off the end: the file alone still verifies
    assert verify_cli(capsys, path, "--fingerprint", fp)[0] == 0
    code, out = verify_cli(capsys, path, "--fingerprint", fp, "--anchor", str(saved))
    assert code == 1 and "cut short" in out, out
    recs[3]["body"]["figures"]["D2"]["numerator"] = 6  # the keeper re-signs March with its own key
    relink(recs, 3, signer)
    write(path, recs)
    assert verify_cli(capsys, path, "--key", str(tmp_path / keys.PUBLIC_FILE))[0] == 0
    code, out = verify_cli(capsys, path, "--key", str(tmp_path / keys.PUBLIC_FILE), "--anchor", str(saved))
    assert code == 1 and "record 4 is not the anchored one" in out and "rewritten after it was anchored" in out, out


def test_a_running_collector_signs_with_the_rotated_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from collector.app import Collector
    from collector.config import parse_config

    data = {"site": {"enterprise_id": "e1"}, "state_dir": str(tmp_path / "state"),
            "mqtt": {"url": "mqtt://127.0.0.1:1"}}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    collector = Collector(parse_config(data))
    try:
        old = collector.signer.fingerprint
        assert main(["keys", "rotate", "-c", str(cfg_path)]) == 0
        collector.close_months()
        new = keys.load(tmp_path / "state")
        assert new is not None and collector.signer.fingerprint == new.fingerprint != old
        # the rotation record is the new head: anchored (queued in the outbox) by the same minute's check
        assert collector.outbox.stats("evidence")["depth_batches"] == 1 and collector.anchor() is None
        from collector.evidence import anchors
        queued = anchors.receipts(tmp_path / "state" / anchors.ANCHOR_FILE)
        assert [(r["seq"], r["reason"]) for r in queued] == [(2, "head")]
    finally:
        collector.outbox.close()
        collector.store.close()


def test_the_evidence_package_imports_nothing_from_the_collector() -> None:
    """The city hub reuses it: stdlib, cryptography and itself only (DESIGN.md, layering)."""
    import ast
    import sys

    for path in sorted((ROOT / "collector/evidence").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "cryptography" or top == "__future__" \
                    or name.startswith("collector.evidence"), f"{path.name} imports {name}"
