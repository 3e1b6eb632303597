"""Local runs' rendezvous ports: free when chosen, and outside the range outgoing connections draw from.

A port from the kernel's ephemeral range (what bind(0) hands out) can become the local end of any
outgoing connection between the check and the rendezvous' bind; the resumed run then died with
EADDRINUSE. These tests read the live range from /proc, as the launcher does.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from launcher.submit.prepare import LISTEN_PORT_FLOOR, free_port_pair, listen_port_range

PROC_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_local_port_pair_is_even_free_and_outside_the_ephemeral_range():
    ephemeral_low, ephemeral_high = (int(field) for field in PROC_RANGE.read_text().split())
    ports = {free_port_pair() for _ in range(20)}
    assert len(ports) > 1, "each run draws its own pair"
    for port in ports:
        assert port % 2 == 0
        assert not ephemeral_low <= port <= ephemeral_high and not ephemeral_low <= port + 1 <= ephemeral_high
        for each in (port, port + 1):
            with socket.socket() as listener:  # a listener can still take it, as the rendezvous will
                listener.bind(("127.0.0.1", each))
                listener.listen()


def test_a_held_port_is_not_chosen(monkeypatch):
    from launcher.submit.prepare import _free

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        if not (_free((taken & ~1) + 2) and _free((taken & ~1) + 3)):
            pytest.skip("the neighbouring pair is in use by something else on this host")
        monkeypatch.setattr("launcher.submit.prepare.listen_port_range", lambda: (taken & ~1, (taken & ~1) + 3))
        # The only candidates are taken & ~1 (one of its pair held) and the pair after it.
        assert free_port_pair() == (taken & ~1) + 2


@pytest.mark.parametrize(
    ("proc_text", "expected"),
    [
        ("32768\t60999\n", (LISTEN_PORT_FLOOR, 32767)),  # Linux's default: below it
        ("10000 40000\n", (40001, 65535)),  # no room below: above it
        ("1024 65000\n", (LISTEN_PORT_FLOOR, 65535)),  # no room either side: the free check alone
        ("garbage\n", (LISTEN_PORT_FLOOR, 32767)),  # unreadable: Linux's default range assumed
    ],
)
def test_listen_range_avoids_the_ephemeral_range(tmp_path: Path, proc_text: str, expected: tuple[int, int]):
    proc_file = tmp_path / "ip_local_port_range"
    proc_file.write_text(proc_text)
    assert listen_port_range(proc_file) == expected
    assert listen_port_range(tmp_path / "missing") == (LISTEN_PORT_FLOOR, 32767)
