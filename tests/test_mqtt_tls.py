"""TLS to a real mosquitto: a throw-away PKI made here with `cryptography`, and the reasons a connection fails.

In the field a broker whose certificate the gateway did not trust was logged only as `not_connected … (will
keep trying)`: the log must say why (unknown CA, hostname mismatch).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector.broker import MosquittoProcess, free_port
from collector.sinks.mqtt import MqttSettings, MqttSink


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(cn: str, path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_server_cert(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], names: list[str], cert_path: Path,
                     key_path: Path) -> None:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoProcess, Path]]:
    """A mosquitto with a TLS listener whose certificate (for `broker.test` and 127.0.0.1) is signed by
    the plant CA; yields the broker and the folder holding plant-ca.pem and other-ca.pem."""
    if not MosquittoProcess.available():
        pytest.fail("mosquitto is not installed: `apt-get install mosquitto` (.ci/run does it)")
    pki = tmp_path_factory.mktemp("pki")
    plant = make_ca("plant CA", pki / "plant-ca.pem")
    make_ca("some other CA", pki / "other-ca.pem")
    make_server_cert(plant, ["broker.test"], pki / "server.pem", pki / "server.key")
    proc = MosquittoProcess(free_port(), listener_options=[
        f"cafile {pki / 'plant-ca.pem'}", f"certfile {pki / 'server.pem'}", f"keyfile {pki / 'server.key'}"])
    proc.start()
    yield proc, pki
    proc.stop()


async def _connect(host: str, port: int, ca_file: Path) -> MqttSink:
    sink = MqttSink(MqttSettings(host=host, port=port, topic_root="t/tls", tls=True, ca_file=str(ca_file),
                                 client_id=f"tls-{free_port()}"))
    await sink.start(wait=2.0)
    return sink


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event}" in r.getMessage()]


async def test_trusted_ca_and_matching_name_connect(tls_broker: tuple[MosquittoProcess, Path]) -> None:
    broker, pki = tls_broker
    sink = await _connect("127.0.0.1", broker.port, pki / "plant-ca.pem")
    try:
        assert sink.connected and sink.connect_error is None
    finally:
        await sink.stop()


async def test_an_unknown_ca_is_named_in_the_log(tls_broker: tuple[MosquittoProcess, Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    broker, pki = tls_broker
    caplog.set_level("INFO", logger="collector.sinks.mqtt")
    sink = await _connect("127.0.0.1", broker.port, pki / "other-ca.pem")
    try:
        assert not sink.connected
        failed = _lines(caplog, "connect_failed")
        assert len(failed) == 1, failed  # paho retried meanwhile: the same reason is said once
        assert "unknown CA" in failed[0] and "mqtt.ca_file" in failed[0]
        # OpenSSL's words beside ours (mosquitto sends the chain with its CA: "self-signed … in chain")
        assert "certificate in certificate chain)" in failed[0] or "local issuer certificate)" in failed[0]
        (waiting,) = _lines(caplog, "not_connected")
        assert "reason=TLS: unknown CA" in waiting
    finally:
        await sink.stop()


async def test_a_hostname_mismatch_is_named_in_the_log(tls_broker: tuple[MosquittoProcess, Path],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    broker, pki = tls_broker
    caplog.set_level("INFO", logger="collector.sinks.mqtt")
    sink = await _connect("localhost", broker.port, pki / "plant-ca.pem")  # the certificate names broker.test
    try:
        assert not sink.connected
        (failed, *_) = _lines(caplog, "connect_failed")
        assert "hostname mismatch" in failed and "'localhost'" in failed, failed
        assert "unknown CA" not in failed
    finally:
        await sink.stop()
