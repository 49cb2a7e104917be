"""Certificates made at test time: a CA, a server certificate for loopback, a client one.

Redis, Sentinel and the database serve the server certificate (SAN 127.0.0.1 and
localhost, so host-name checks pass); the project's processes verify it against the CA
and show the client certificate to servers that ask for one (mutual TLS).

    tls = Certificates(tmp_path / "tls")
    env = tls.env()            # REDIS_TLS, REDIS_TLS_CA_FILE, ... for the project
    client = redis.Redis(..., **tls.redis_options())
"""

from __future__ import annotations

from pathlib import Path

import trustme

from tests.harness.ports import LOOPBACK


def _write(certificate: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    certificate.cert_chain_pems[0].write_to_path(str(cert_path))
    certificate.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return cert_path, key_path


class Certificates:
    """A throwaway CA (trustme) and the certificates it signs, as PEM files in `directory`.

    Both certificates serve either end of a connection (trustme's leaves carry serverAuth
    and clientAuth): replicas and sentinels show the server one when they connect to a node.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        authority = trustme.CA()
        self.ca = directory / "ca.crt"
        authority.cert_pem.write_to_path(str(self.ca))
        server = authority.issue_cert(LOOPBACK, "localhost")
        self.server_cert, self.server_key = _write(server, directory, "server")
        client = authority.issue_cert("client@tests.invalid")
        self.client_cert, self.client_key = _write(client, directory, "client")

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
