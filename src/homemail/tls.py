"""TLS for every listener and client: the certificate (configured, or self-signed at first start) and contexts.

Contexts allow TLS 1.2 and 1.3 only, with the ciphers of Python's secure defaults.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from homemail.config import Config

log = logging.getLogger(__name__)


def certificate_paths(config: Config) -> tuple[Path, Path]:
    """The certificate and key to serve: the configured pair, else a self-signed pair made once in data_dir."""
    if config.tls.cert and config.tls.key:
        return config.tls.cert, config.tls.key
    folder = config.data_dir / "tls"
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not (cert.is_file() and key.is_file()):
        make_self_signed(config.hostname, cert, key)
        log.info("made a self-signed certificate for %s in %s", config.hostname, folder)
    return cert, key


def make_self_signed(hostname: str, cert_path: Path, key_path: Path, days: int = 3650) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    sans: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        sans.append(x509.DNSName("localhost"))
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.replace(tmp_key, key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_cert, cert_path)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(verify: bool = True, cafile: str | None = None) -> ssl.SSLContext:
    """For outgoing connections. Opportunistic STARTTLS to MX hosts uses verify=False (RFC 7435)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """ "TLS1.3 TLS_AES_256_GCM_SHA384 256" style text for Received: headers and logs."""
    if obj is None:
        return ""
    cipher = obj.cipher()
    version = (obj.version() or "").replace("v", "")
    if not cipher:
        return version
    return f"{version} {cipher[0]} {cipher[2]}"
