"""Free TCP ports on the loopback interface, and waiting for a listener."""

from __future__ import annotations

import socket
import threading

from tests.harness.waiting import wait_until

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports nobody listens on now, never handed out before by this process.

    All sockets are held open until every port is chosen, so the kernel cannot return the
    same port twice; ports already given to an earlier caller are skipped, so two servers
    that have not bound yet do not race for one port.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        with _lock:
            while len(ports) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
                if port in _handed_out:
                    continue
                _handed_out.add(port)
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def port_is_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float, host: str = LOOPBACK) -> None:
    """Block until something accepts connections on host:port."""
    wait_until(lambda: port_is_open(port, host), timeout, f"a listener on {host}:{port}", 0.05)
