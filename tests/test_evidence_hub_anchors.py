"""The hub's receipts on the enterprise side (collector/evidence/hub_anchors.py), without a broker: which are
kept, which refused, and what `collector verify --hub-key` says of them, also after the chain was rewritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collector.cli import main
from collector.evidence import hub_anchors, keys
from collector.evidence.receipts import make_receipt
from tests.hubsupport import Collector


def receipt(hub: keys.Signer, rec: dict[str, Any], status: str = "accepted", workshop: str = "ws-1",
            reason: str | None = None) -> bytes:
    r = make_receipt(hub, hub="test-hub", enterprise="91330402MA2B3C4D53", workshop=workshop,
                     seq=int(rec["seq"]), record_hash=str(rec["hash"]), status=status, reason=reason,
                     received_at="2026-12-04T00:01:00.000Z")
    return json.dumps(r).encode()


def test_receipts_are_checked_kept_once_and_verified_against_the_chain(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    hub = keys.Signer(keys.generate())
    (tmp_path / "hub.pub").write_text(keys.public_b64(hub.public))
    c = Collector("jx-hengda", "ws-1")
    month = c.close_month("2026-11", (5, 7), (4, 6))
    chain_file = c.write_chain(tmp_path / "evidence-chain.jsonl")
    book = hub_anchors.HubReceipts(tmp_path, chain_file, hub.public, "ws-1")
    forged = keys.Signer(keys.generate())
    outcomes = [book.take(receipt(hub, c.records[0])), book.take(receipt(hub, month)),
                book.take(receipt(hub, month)),  # the same receipt again (a duplicate head): kept once
                book.take(receipt(forged, month)), book.take(b"not json"),
                book.take(receipt(hub, month, workshop="ws-2")),  # another collector of the enterprise
                book.take(receipt(hub, {"seq": 9, "hash": "e" * 64})),
                book.take(receipt(hub, month, status="incident", reason="record 2 differs from the one held"))]
    assert outcomes == ["accepted", "accepted", "accepted", "bad_signature", "bad_signature", "not_ours",
                        "unknown_record", "incident"]
    assert book.counts["bad_signature"] == 2 and book.counts["accepted"] == 3
    kept = hub_anchors.entries(tmp_path / hub_anchors.HUB_FILE)
    assert [(e["seq"], e["status"]) for e in kept] == [(1, "accepted"), (2, "accepted"), (2, "incident")]
    assert [e["seq"] for e in hub_anchors.anchors(tmp_path / hub_anchors.HUB_FILE)] == [1, 2]

    assert main(["verify", str(chain_file), "--hub-key", str(tmp_path / "hub.pub")]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 hub anchor(s) verify and match the chain" in out
    assert "hub receipt: record 2 incident by hub test-hub" in out and "differs from the one held" in out

    # the enterprise rewrites November with better figures, re-signed with its own key: the hub's receipt says no
    c.records.pop()
    c.close_month("2026-11", (7, 7), (6, 6))
    c.write_chain(chain_file)
    assert main(["verify", str(chain_file), "--hub-key", str(tmp_path / "hub.pub")]) == 1
    out = capsys.readouterr().out
    assert "hub anchor: BROKEN: record 2: the hub holds record 2 with hash" in out
    assert "rewritten after the hub received it" in out and "1 of 2 hub anchor(s)" in out
    # with another hub key, no receipt verifies
    (tmp_path / "other.pub").write_text(keys.public_b64(forged.public))
    assert main(["verify", str(chain_file), "--hub-key", str(tmp_path / "other.pub")]) == 1
    assert "0 of 2 hub anchor(s)" in capsys.readouterr().out
    assert main(["verify", str(chain_file), "--hub-key", "nonsense"]) == 2
    assert "--hub-key:" in capsys.readouterr().err
