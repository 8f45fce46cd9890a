"""A private certificate authority and a server certificate it signs, for servers that leave loopback: the
clients trust the CA's certificate alone (PostgreSQL's `sslmode=verify-full`, MLflow's
`MLFLOW_TRACKING_SERVER_CERT_PATH`), so nobody on the network can read or impersonate either server."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from training.infra.processes import private_dir, write_secret

VALID_DAYS = 825  # what browsers and most clients accept for a server certificate


@dataclass(frozen=True)
class ServerCertificate:
    ca: Path  # the certificate clients verify against
    certificate: Path
    key: Path  # 0600


def ensure_certificates(folder: Path, names: list[str], rsa_key: bool = False) -> ServerCertificate:
    """The CA (made once) and a server certificate for `names` (host names and addresses), made again when
    the names change. `rsa_key`: the server's key is RSA (TorchServe reads no other), else EC P-256."""
    folder = private_dir(folder)
    ca_cert, ca_key = folder / "ca.crt", folder / "ca.key"
    if not (ca_cert.exists() and ca_key.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attention-serve CA")])
        certificate = (
            builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(*[False] * 5, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        write_secret(ca_key, pem_key(key))
        ca_cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    server = ServerCertificate(ca_cert, folder / "server.crt", folder / "server.key")
    if not server.certificate.exists() or certificate_names(server.certificate) != sorted(set(names)):
        issue(server, serialization.load_pem_private_key(ca_key.read_bytes(), None), names, rsa_key)
    return server


def issue(server: ServerCertificate, ca_key, names: list[str], rsa_key: bool = False) -> None:
    ca = x509.load_pem_x509_certificate(server.ca.read_bytes())
    key = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives = [subject_alternative(name) for name in sorted(set(names))]
    certificate = (
        builder(subject, ca.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_secret(server.key, pem_key(key))
    server.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def subject_alternative(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def certificate_names(path: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(str(name.value) for name in alternatives)


def pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
