"""OPC UA security against the secured simulator: SignAndEncrypt with two policies and a user name, a wrong
password, an untrusted server certificate, and `collector certs`.

The simulator makes its own certificate; a test trusts it by copying it to the client's pki/trusted/, exactly as
an operator does (docs/opcua.md).
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from adapters.base import AdapterError
from adapters.opcua.adapter import OpcUaAdapter
from adapters.opcua.security import Pki, certificate_uris, load_certificate
from collector.cli import main
from collector.config import OpcUaDevice, parse_config
from collector.model import Quality
from simulators.opcua import OpcUaMachineSim, SimSecurity
from tests.support.broker import free_port

pytestmark = pytest.mark.integration

NS = "urn:shopfloor-collector:test-sec"
APP_URI = "urn:shopfloor-collector:test-client"
PASSWORD_ENV = "SFC_TEST_OPCUA_PASSWORD"


def make_device(port: int, pki: Path, policy: str = "Basic256Sha256", **extra: Any) -> OpcUaDevice:
    cfg = parse_config({
        "site": {"enterprise_id": "t"},
        "devices": [{
            "id": "cnc", "protocol": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}", "namespace_uri": NS,
            "mode": "poll", "timeout": 3.0,
            "security": {"mode": "SignAndEncrypt", "policy": policy, "pki_dir": str(pki), "application_uri": APP_URI},
            "username": "operator", "password_env": PASSWORD_ENV,
            "simulate": {"initial": "running", "dwell": [3600, 3600]},
            "tags": [{"name": "program", "node": f"nsu={NS};s=Program", "type": "string",
                      "sim": {"kind": "constant", "value": "O4711"}},
                     {"name": "override", "node": f"nsu={NS};s=Monitoring.Spindle1.Override"}],
            **extra,
        }],
    })
    dev = cfg.devices[0]
    assert isinstance(dev, OpcUaDevice)
    return dev


@pytest.fixture
async def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    """Start a secured sim (SignAndEncrypt only, user `operator` / `s3cret`, no anonymous access)."""
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    sims: list[OpcUaMachineSim] = []
    adapters: list[OpcUaAdapter] = []

    async def start(policy: str = "Basic256Sha256", trust: bool = True) -> tuple[OpcUaMachineSim, OpcUaAdapter]:
        port = free_port()
        client_pki = tmp_path / "client-pki"
        device = make_device(port, client_pki, policy)
        sim = OpcUaMachineSim(device, security=SimSecurity(tmp_path / "sim-pki", modes=("SignAndEncrypt",),
                                                           users={"operator": "s3cret"}, allow_anonymous=False))
        sims.append(sim)
        await sim.start()
        if trust:
            assert sim.certificate_path is not None
            Pki(client_pki).ensure_layout()
            shutil.copy(sim.certificate_path, client_pki / "trusted" / "sim.der")
        adapter = OpcUaAdapter(device)
        adapters.append(adapter)
        return sim, adapter

    yield start
    for adapter in adapters:
        await adapter.close()
    for sim in sims:
        await sim.stop()


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes256_Sha256_RsaPss"])
async def test_sign_and_encrypt_with_user_name(secured: Callable[..., Any], policy: str) -> None:
    sim, adapter = await secured(policy)
    await adapter.connect()
    readings = {r.tag: r for r in await adapter.read()}
    assert readings["program"].value == "O4711" and readings["program"].quality == Quality.GOOD
    assert readings["override"].value == 100.0
    assert sim.session_count() == 1
    assert sim.server is not None
    session = next(iter(sim.server.iserver._external_sessions.values()))
    assert session.user is not None and session.user.name == "operator"
    assert adapter._client is not None
    assert adapter._client.security_policy.URI.endswith("#" + policy)
    # the certificate made on first use carries our ApplicationUri in its SAN
    cert = load_certificate(adapter.pki.cert)
    assert certificate_uris(cert) == [APP_URI]
    assert stat.S_IMODE(adapter.pki.key.stat().st_mode) == 0o600


async def test_wrong_password_fails_with_a_clear_message(secured: Callable[..., Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sim, adapter = await secured()
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(AdapterError) as info:
        await adapter.connect()
    assert "user 'operator' refused by the server (BadUserAccessDenied)" in info.value.reason
    assert "check username and password" in info.value.reason
    assert sim.session_count() == 0  # the refused session was not left behind


async def test_missing_password_is_named(secured: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _sim, adapter = await secured()
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(AdapterError, match=f"no password for user 'operator': set env {PASSWORD_ENV}"):
        await adapter.connect()


async def test_untrusted_server_certificate_is_refused_and_saved(secured: Callable[..., Any],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    sim, adapter = await secured(trust=False)
    with pytest.raises(AdapterError) as info:
        await adapter.connect()
    reason = info.value.reason
    assert "server certificate of opc.tcp://127.0.0.1" in reason and "is not trusted" in reason
    rejected = list(adapter.pki.rejected.iterdir())
    assert len(rejected) == 1
    assert sim.certificate_path is not None
    assert rejected[0].read_bytes() == sim.certificate_path.read_bytes()
    assert f"trust it with: mv '{rejected[0]}' '{adapter.pki.trusted}/'" in reason
    assert any("is not trusted" in r.getMessage() for r in caplog.records)  # logged, with the same advice
    assert sim.session_count() == 0  # refused before any session was made

    # doing what the message says makes it work
    shutil.move(rejected[0], adapter.pki.trusted / rejected[0].name)
    await adapter.connect()
    assert {r.tag: r.value for r in await adapter.read()}["program"] == "O4711"


def test_certs_command_creates_the_pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = tmp_path / "pki"
    assert main(["certs", "--pki", str(pki), "--application-uri", "urn:acme:gateway-7"]) == 0
    out = capsys.readouterr().out
    assert "created certificate" in out and "urn:acme:gateway-7" in out
    for sub in ("own/cert.der", "own/key.pem", "trusted", "rejected"):
        assert (pki / sub).exists(), sub
    cert = x509.load_der_x509_certificate((pki / "own/cert.der").read_bytes())
    assert certificate_uris(cert) == ["urn:acme:gateway-7"]
    first = (pki / "own/cert.der").read_bytes()
    assert main(["certs", "--pki", str(pki), "--application-uri", "urn:acme:gateway-7"]) == 0  # kept
    assert (pki / "own/cert.der").read_bytes() == first
    # another ApplicationUri would break every server that trusts the old one: refused without --force
    assert main(["certs", "--pki", str(pki), "--application-uri", "urn:other"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["certs", "--pki", str(pki), "--application-uri", "urn:other", "--force"]) == 0
    assert certificate_uris(load_certificate(pki / "own/cert.der")) == ["urn:other"]
