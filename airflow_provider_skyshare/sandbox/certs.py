"""A sandbox CA and the certificates signed by it (serving, admin, webhook).

One CA for the whole sandbox: every component listens on 127.0.0.1 only, and one trust
root keeps the kubeconfig and the webhook caBundle simple.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAYS = 3650


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(d: Path) -> None:
    if (d / "ca.crt").exists():
        return
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skyshare-sandbox-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(d / "ca.key", _pem_key(key))
    _write(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def issue(d: Path, name: str, cn: str, orgs: tuple[str, ...] = (), server: bool = False) -> None:
    """d/name.crt + d/name.key signed by the sandbox CA (skipped when present)."""
    if (d / f"{name}.crt").exists():
        return
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    key = _key()
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=DAYS))
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(d / f"{name}.key", _pem_key(key))
    _write(d / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))


def ensure_service_account_keys(d: Path) -> None:
    if (d / "sa.key").exists():
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(d / "sa.key", _pem_key(key))
    _write(d / "sa.pub", key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def ensure_all(d: Path) -> None:
    ensure_ca(d)
    ensure_service_account_keys(d)
    issue(d, "serving", "127.0.0.1", server=True)
    issue(d, "admin", "skyshare-sandbox-admin", ("system:masters",))
