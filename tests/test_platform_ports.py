"""Free ports for throwaway platforms come from below the kernel's ephemeral range (infra.ports), where no
process that binds port 0 (Spark, Dagster's code servers) can take one between picking and starting."""

from __future__ import annotations

import socket
from pathlib import Path

from infra import ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    got = [ports.free_port() for _ in range(50)]
    assert len(set(got)) == 50
    assert all(20000 <= p < low for p in got)
    with socket.socket() as s:
        s.bind(("127.0.0.1", got[0]))  # nothing holds it


def test_a_port_in_use_is_never_given(monkeypatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken, taken + 1])
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: 65000)
        monkeypatch.setattr(ports.random.Random, "randint", lambda self, a, b: next(draws))
        assert ports.free_port() != taken
