"""Certificates made at test time: a CA, a server certificate for loopback, a client one.

Redis, Sentinel and the database serve the server certificate (SAN 127.0.0.1 and
localhost, so host-name checks pass); the project's processes verify it against the CA
and show the client certificate to servers that ask for one (mutual TLS).

    tls = Certificates(tmp_path / "tls")
    env = tls.env()            # REDIS_TLS, REDIS_TLS_CA_FILE, ... for the project
    client = redis.Redis(..., **tls.redis_options())
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.ports import LOOPBACK

_LIFETIME = datetime.timedelta(days=2)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


class Certificates:
    """A throwaway CA and the certificates it signs, as PEM files in `directory`."""

    def __init__(self, directory: Path, *, common_name: str = "test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = _name(common_name)
        ca = (
            self._builder(self._ca_name, self._ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = directory / "ca.crt"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self._issue(
            "server",
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            # Replicas and sentinels show it when they connect to a node.
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        self.client_cert, self.client_key = self._issue(
            "client", None, [ExtendedKeyUsageOID.CLIENT_AUTH]
        )

    def _builder(
        self, subject: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now)
            .not_valid_after(self._now + _LIFETIME)
        )

    def _issue(
        self,
        name: str,
        names: x509.SubjectAlternativeName | None,
        usages: list[x509.ObjectIdentifier],
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(name), key).add_extension(
            x509.ExtendedKeyUsage(usages), critical=False
        )
        if names is not None:
            builder = builder.add_extension(names, critical=False)
        certificate = builder.sign(self._ca_key, hashes.SHA256())
        cert_path = self.directory / f"{name}.crt"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cert_path, _write_key(key, self.directory / f"{name}.key")

    def redis_server_lines(self) -> list[str]:
        """redis.conf lines: TLS only, clients and replicas must show a certificate of the CA."""
        return [
            f'tls-cert-file "{self.server_cert}"',
            f'tls-key-file "{self.server_key}"',
            f'tls-ca-cert-file "{self.ca}"',
            # Replicas, and sentinels talking to nodes and to each other, use TLS too.
            "tls-replication yes",
            "tls-auth-clients yes",
        ]

    def redis_options(self) -> dict[str, object]:
        """redis-py arguments of a client trusting the CA, with the client certificate."""
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }

    def env(self) -> dict[str, str]:
        """The project's settings for TLS to Redis and Sentinel."""
        return {
            "REDIS_TLS": "true",
            "REDIS_TLS_CA_FILE": str(self.ca),
            "REDIS_TLS_CERT_FILE": str(self.client_cert),
            "REDIS_TLS_KEY_FILE": str(self.client_key),
        }
