"""free_port: the ports tests hand to servers they start later."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.local import host


def test_ports_come_from_below_the_ephemeral_range_and_never_twice() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [host.free_port() for _ in range(50)]

    assert len(set(ports)) == 50
    assert all(10000 <= port < low for port in ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        # the only candidate is held: every try fails its bind, and the kernel chooses
        monkeypatch.setattr(host, "_below_ephemeral", lambda: range(taken, taken + 1))
        monkeypatch.setattr(host, "_handed_out", set())

        port = host.free_port()

    assert port != taken
    assert host._handed_out == set()


def test_without_a_range_to_choose_from_the_kernel_chooses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host, "_EPHEMERAL_RANGE", Path("/nonexistent/ip_local_port_range"))

    port = host.free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
