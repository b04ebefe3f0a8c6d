"""An address a peer advertises is a claim, not an order (issue 18; docs/ARCHITECTURE.md "Dial scope"). A
hostile peer gossips validly signed records whose addresses point at the node's own machine: a service
on 127.0.0.1 (as a multiaddr too) and 0.0.0.0, which Linux connects to the machine itself. A node that
lives beyond loopback (here: it advertises a non-loopback address) must not connect to any of them, and
counts each refusal. The control: a node of a loopback-only mesh, given the same gossip, does connect,
so the refusal is the gate's doing and not a dial that never happened."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mesh.wire.identity import Identity
from mesh.wire.records import make_record

from ..conftest import cli_json, wait_for
from .hostile import NETWORK, HostilePeer, now_ms

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]
QUIET_S = 6.0  # how long the guarded node is watched for a dial it must not make


class Victim:
    """A TCP service on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def victim():
    v = Victim()
    yield v
    v.close()


def pointing_at(port: int) -> list:
    """Validly signed records of fresh keys, each claiming an address on the receiver's own machine."""
    addrs = [f"127.0.0.1:{port}", f"/ip4/127.0.0.1/tcp/{port}", f"0.0.0.0:{port}"]
    return [make_record(Identity.generate(), NETWORK, a, ["python"], [], False, now_ms()) for a in addrs]


def gossip(evil: HostilePeer, records: list) -> None:
    node_key = bytes.fromhex(evil.handshake()["from"])
    evil.send(evil.hello_frame(node_key, records))  # not its first hello: the node takes the gossip


def test_a_node_beyond_loopback_never_dials_its_own_machine_for_a_peer(make_mesh, victim):
    guarded = make_mesh(1, lambda i: ["--no-model", "--no-scrape", "--advertise", "198.51.100.7:4750"],
                        name="guarded").nodes[0]
    with HostilePeer(guarded.listen) as evil:
        gossip(evil, pointing_at(victim.port))
        wait_for(lambda: victim.accepted or refused(guarded).get("addr-never"), 15,
                 "the node to dial or refuse the records")
        deadline = time.monotonic() + QUIET_S  # and nothing gets through meanwhile (heartbeats redial)
        while time.monotonic() < deadline and not victim.accepted:
            time.sleep(0.1)
    assert victim.accepted == 0, f"the node connected to 127.0.0.1:{victim.port} {victim.accepted} times"
    assert refused(guarded).get("addr-loopback", 0) >= 2, refused(guarded)  # HOST:PORT and multiaddr alike


def refused(node) -> dict:
    return cli_json("status", "--home", str(node.home))["dials_refused"]


def test_the_control_a_loopback_mesh_dials_the_same_gossip(make_mesh, victim):
    local = make_mesh(1, lambda i: ["--no-model", "--no-scrape"], name="local").nodes[0]
    with HostilePeer(local.listen) as evil:
        gossip(evil, pointing_at(victim.port))
        wait_for(lambda: victim.accepted, 15, "the loopback node to dial the gossiped address")
    assert not refused(local).get("addr-loopback")
