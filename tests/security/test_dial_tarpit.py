"""Addresses in strangers' records that never answer (issue 18, mesh/node/p2p/transport.py `_Turns`). A
node negotiates at most MAX_DIALING new links at once, so a hostile peer can gossip validly signed
records whose addresses are tarpits (they accept TCP and then say nothing) or black holes (they drop
the SYN). Neither may hold the node's other dials back for the whole LINK_TIMEOUT: a tarpit keeps a
turn for DIAL_TIMEOUT at most, and a connect nobody answers fails in DIAL_TIMEOUT."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from mesh.node.flow import Limits
from mesh.node.gateway import DIAL_TIMEOUT
from mesh.wire.identity import Identity

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(60)]


def transport():
    from mesh.node.p2p.transport import Libp2pTransport

    return Libp2pTransport(Identity.generate(), nat=False, discovery=False)


async def started(t, accept=lambda conn: None) -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    addrs = await t.start(sock, accept)
    return addrs[0]


async def timed(coro) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        await coro
    except ConnectionError as exc:
        return time.monotonic() - t0, exc
    return time.monotonic() - t0, None


def test_tarpits_in_gossip_do_not_hold_back_an_honest_dial():
    """More tarpit dials than turns, then one honest peer: it links in seconds, not after the tarpits'
    LINK_TIMEOUT; the tarpit dials fail, each in LINK_TIMEOUT from its turn."""
    from mesh.node.p2p.transport import LINK_TIMEOUT, MAX_DIALING, DialFailed

    tarpit = socket.create_server(("127.0.0.1", 0), backlog=64)  # accepts (the kernel does) and never speaks
    port = tarpit.getsockname()[1]

    async def go():
        dialer, honest = transport(), transport()
        await started(dialer)
        served = []
        honest_addr = await started(honest, served.append)
        try:
            traps = [asyncio.create_task(timed(dialer.dial(f"127.0.0.1:{port}", Identity.generate().public_key,
                                                           Limits())))
                     for _ in range(MAX_DIALING + 2)]
            await asyncio.sleep(0.2)  # the tarpits hold every turn
            took, failed = await timed(dialer.dial(honest_addr, honest.identity.public_key, Limits()))
            traps_done = await asyncio.gather(*traps)
            return took, failed, traps_done
        finally:
            await dialer.close()
            await honest.close()

    try:
        took, failed, traps = asyncio.run(go())
    finally:
        tarpit.close()
    assert failed is None
    assert took < DIAL_TIMEOUT + 3.0 < LINK_TIMEOUT, f"the honest dial waited {took:.1f} s behind tarpits"
    assert all(isinstance(exc, DialFailed) for _, exc in traps)
    assert all(t <= DIAL_TIMEOUT + LINK_TIMEOUT + 2.0 for t, _ in traps)  # LINK_TIMEOUT from their turn


def test_a_connect_nobody_answers_fails_in_the_dial_timeout():
    """A listener whose accept queue is full drops SYNs, like a black-holed address: the dial fails in
    DIAL_TIMEOUT (its turn is free again), not LINK_TIMEOUT."""
    from mesh.node.p2p.transport import LINK_TIMEOUT, DialFailed

    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(3):  # complete handshakes nobody accepts: the queue is full, later SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)

    async def go():
        dialer = transport()
        await started(dialer)
        try:
            return await timed(dialer.dial(f"127.0.0.1:{port}", Identity.generate().public_key, Limits()))
        finally:
            await dialer.close()

    try:
        took, exc = asyncio.run(go())
    finally:
        for s in fillers:
            s.close()
        full.close()
    assert isinstance(exc, DialFailed)
    assert DIAL_TIMEOUT - 0.5 <= took < LINK_TIMEOUT - 3.0, f"the dial took {took:.1f} s"
