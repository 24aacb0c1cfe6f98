"""Free loopback ports for throwaway platforms (tests, benchmarks).

A port from ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the same range every
process that binds port 0 draws from (Spark's driver and block manager, Dagster's code servers, the
Kafka client's sockets). Between picking such a port and starting the service on it, any of them can
take it: CI once lost MLflow's port that way. So ports are drawn below the ephemeral range, where
nothing lands by chance, and never handed out twice in one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 20000
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on, below the ephemeral range, not given out before."""
    high = _ephemeral_low() - 1
    if high - _LOW < 1000:  # an unusual range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    rng = random.Random()
    for _ in range(2000):
        port = rng.randint(_LOW, high)
        if port not in _given and _bindable(host, port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port on {host} between {_LOW} and {high}")
