"""OPC UA security: the PKI folder, our application instance certificate, and trusting server certificates.

Layout of a PKI folder (default `<state_dir>/pki`, see docs/opcua.md):

    pki/own/cert.der      our certificate (DER), SAN URI = the client's ApplicationUri, SAN DNS = host names
    pki/own/key.pem       its private key (PKCS#8 PEM, mode 0600)
    pki/trusted/          server certificates (or the CA certificates that issued them) we trust: .der/.pem/.crt
    pki/rejected/         server certificates we refused, saved so an operator can inspect and trust them

Why it looks like this: the certificate's SAN URI must equal the ApplicationUri we send in CreateSession, or
most servers refuse the session with an unhelpful BadCertificateUriInvalid; generating both from one config
value is what makes "it works the first time" possible. Trust is explicit: a server certificate that is not in
trusted/ (nor issued by a CA there) is refused before a session is created, copied to rejected/, and the log
line says the exact `mv` that trusts it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

DEFAULT_APPLICATION_URI = "urn:shopfloor-collector:client"
CERT_DAYS = 5 * 365

#: config policy name -> asyncua policy class
POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
#: (config policy name, config mode) -> the server-side endpoint type
POLICY_TYPES: dict[tuple[str, str], ua.SecurityPolicyType] = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}


class SecurityError(Exception):
    """A certificate problem an operator has to act on; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of one PKI folder."""

    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key(self) -> Path:
        return self.root / "own" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    def ensure_layout(self) -> None:
        for d in (self.root / "own", self.trusted, self.rejected):
            d.mkdir(parents=True, exist_ok=True)


def host_names() -> list[str]:
    """DNS names for the SAN: this host's name (and FQDN) and localhost."""
    names = [socket.gethostname(), socket.getfqdn(), "localhost"]
    return list(dict.fromkeys(n for n in names if n))


def create_certificate(pki: Pki, application_uri: str, *, server: bool = False, force: bool = False,
                       common_name: str | None = None, days: int = CERT_DAYS) -> tuple[x509.Certificate, bool]:
    """Our certificate and key in `pki/own/`, made if missing (or when `force`). Returns (cert, created).

    An existing certificate whose SAN URI differs from `application_uri` raises SecurityError unless `force`:
    replacing it silently would break every server that already trusts it.
    """
    from asyncua.crypto import cert_gen

    pki.ensure_layout()
    if not force and pki.cert.is_file() and pki.key.is_file():
        cert = load_certificate(pki.cert)
        uris = certificate_uris(cert)
        if application_uri not in uris:
            raise SecurityError(
                f"{pki.cert} is for ApplicationUri {', '.join(uris) or '(none)'}, not {application_uri}: run "
                f"`collector certs --pki {pki.root} --application-uri {application_uri} --force` and trust the new "
                "certificate on the server")
        return cert, False
    key = cert_gen.generate_private_key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    sans += [x509.DNSName(n) for n in host_names()]
    uses = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    cert = cert_gen.generate_self_signed_app_certificate(
        key, common_name or ("shopfloor-collector" if not server else application_uri), {}, sans, uses, days=days)
    fd = os.open(pki.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    pki.cert.write_bytes(cert.public_bytes(Encoding.DER))
    return cert, True


def load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER, as OPC UA tools show it."""
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest().upper()


def subject_cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def first_certificate(der: bytes) -> x509.Certificate:
    """A server may send its certificate followed by its chain: take the first DER SEQUENCE."""
    if len(der) > 4 and der[1] == 0x82:
        der = der[:int.from_bytes(der[2:4], "big") + 4]
    return x509.load_der_x509_certificate(der)


def _trusted_certificates(pki: Pki) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    if not pki.trusted.is_dir():
        return out
    for path in sorted(pki.trusted.iterdir()):
        if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        try:
            out.append(load_certificate(path))
        except (ValueError, OSError) as exc:
            log.warning("pki: cannot read trusted certificate %s: %s", path, exc)
    return out


def is_trusted(pki: Pki, cert: x509.Certificate) -> bool:
    """The certificate itself is in trusted/, or a CA certificate in trusted/ issued it."""
    der = cert.public_bytes(Encoding.DER)
    for candidate in _trusted_certificates(pki):
        if candidate.public_bytes(Encoding.DER) == der:
            return True
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, Exception):  # wrong issuer, bad signature, unsupported key type
            continue
        if candidate.subject != cert.subject:  # a CA, not a self-signed look-alike
            return True
    return False


def check_server_certificate(pki: Pki, cert: x509.Certificate, url: str) -> None:
    """Raise SecurityError (after saving the certificate to rejected/) unless the server's certificate is trusted
    and currently valid."""
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SecurityError(f"server certificate of {url} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d}"
                            f" .. {cert.not_valid_after_utc:%Y-%m-%d})")
    if is_trusted(pki, cert):
        return
    pki.ensure_layout()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", subject_cn(cert) or "server").strip("_")[:60] or "server"
    path = pki.rejected / f"{name}_{thumbprint(cert)[:16]}.der"
    path.write_bytes(cert.public_bytes(Encoding.DER))
    raise SecurityError(
        f"server certificate of {url} is not trusted (CN={subject_cn(cert)}, SHA-1 {thumbprint(cert)}); it was saved "
        f"to {path}. If this is the right server, trust it with: mv '{path}' '{pki.trusted}/'")


async def apply(client: Any, pki: Pki, policy: str, mode: str, application_uri: str, timeout: float, url: str) -> None:
    """Make `client` connect with `policy`/`mode`: our certificate (created on first use), and the server's
    certificate from its endpoint list, refused unless trusted. Raises SecurityError with the fix."""
    import asyncio

    cert, created = create_certificate(pki, application_uri)
    if created:
        log.warning("opcua: created client certificate %s (ApplicationUri %s, SHA-1 %s): trust it on the server",
                    pki.cert, application_uri, thumbprint(cert))
    policy_cls = POLICIES[policy]
    msg_mode = MODES[mode]
    endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), timeout)
    endpoint = next((ep for ep in endpoints if ep.SecurityMode == msg_mode and ep.SecurityPolicyUri == policy_cls.URI),
                    None)
    if endpoint is None:
        offered = sorted({f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}" for ep in endpoints})
        raise SecurityError(f"{url} offers no {policy}/{mode} endpoint (it offers: {', '.join(offered)})")
    server_cert = first_certificate(endpoint.ServerCertificate)
    check_server_certificate(pki, server_cert, url)

    async def validate(session_cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        """CreateSession must present the certificate we checked (or another trusted one)."""
        if session_cert.public_bytes(Encoding.DER) != server_cert.public_bytes(Encoding.DER):
            check_server_certificate(pki, session_cert, url)

    client.certificate_validator = validate
    await client.set_security(policy_cls, str(pki.cert), str(pki.key),
                              server_certificate=server_cert.public_bytes(Encoding.DER), mode=msg_mode)


def describe(cert: x509.Certificate, path: Path) -> str:
    """What `collector certs` prints about a certificate."""
    return (f"certificate  {path}\n"
            f"  subject       {cert.subject.rfc4514_string()}\n"
            f"  SAN URI       {', '.join(certificate_uris(cert))}\n"
            f"  SAN DNS       {', '.join(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))}\n"
            f"  valid until   {cert.not_valid_after_utc:%Y-%m-%d}\n"
            f"  SHA-1         {thumbprint(cert)}")
