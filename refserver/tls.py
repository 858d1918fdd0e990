"""TLS for the reference server: loading a certs folder, and making a test CA with its certificates.

A certs folder holds ``ca.pem`` (the CA that signs client certificates), ``server.pem`` (the
server certificate followed by the CA certificate) and ``server.key``. ``--gen-certs`` also writes
``client.pem`` and ``client.key``. Because ``server.pem`` carries the CA, the same folder works as
the OVMS benchmark client's ``--certs_dir`` (which trusts ``server.pem`` and presents
``client.pem``/``client.key``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["ServerCerts", "load_server_certs", "generate_certs", "CertsError"]

SERVER_FILES = ("ca.pem", "server.pem", "server.key")


class CertsError(ValueError):
    """A certs folder that cannot be used; the message names the missing or bad file."""


@dataclass(frozen=True)
class ServerCerts:
    ca: bytes
    chain: bytes
    key: bytes
    folder: Path

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.chain)], root_certificates=self.ca,
                                           require_client_auth=True)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.folder / "server.pem", self.folder / "server.key")
        ctx.load_verify_locations(self.folder / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def load_server_certs(folder: str | Path) -> ServerCerts:
    root = Path(folder)
    if not root.is_dir():
        raise CertsError(f"--certs-dir {folder}: no such folder (make one with --gen-certs {folder})")
    data = {}
    for name in SERVER_FILES:
        try:
            data[name] = (root / name).read_bytes()
        except OSError as exc:
            raise CertsError(f"--certs-dir {folder}: cannot read {name} ({exc.strerror}); the folder needs "
                             f"{', '.join(SERVER_FILES)}") from None
    certs = ServerCerts(data["ca.pem"], data["server.pem"], data["server.key"], root)
    try:
        certs.ssl_context()
    except (ssl.SSLError, OSError) as exc:
        raise CertsError(f"--certs-dir {folder}: the certificates do not load: {exc}") from None
    return certs


def generate_certs(folder: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825) -> Path:
    """Write a fresh CA, a server certificate for ``hosts`` and a client certificate into ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ovms-refserver test")])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("ovms-refserver test CA")).issuer_name(name(
        "ovms-refserver test CA")).public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    server_pem, server_key = leaf(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client_pem, client_key = leaf("ovms-bench client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    files = {"ca.pem": ca_pem, "server.pem": server_pem + ca_pem, "server.key": server_key,
             "client.pem": client_pem, "client.key": client_key}
    for fname, data in files.items():
        path = root / fname
        path.write_bytes(data)
        if fname.endswith(".key"):
            path.chmod(0o600)
    return root
