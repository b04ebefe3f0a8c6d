"""DCUtR as the node runs it (mesh.node.p2p.nat.Puncher): one end of each relayed link starts the punch,
the other only answers, and neither spends 10 s dialling a NATed peer's addresses alone first. The
punch itself, behind real NATs, is in test_nat_mesh.py and `python -m bench.nat`."""

from __future__ import annotations

import pytest
import trio

from mesh.node.p2p.addresses import peer_id_of
from mesh.node.p2p.nat import Puncher
from mesh.wire.identity import Identity

pytestmark = pytest.mark.timeout(30)


class _Host:
    """Just an identity: a Puncher that decides not to start must not touch the network at all."""

    def __init__(self, ident: Identity):
        self.id = peer_id_of(ident.public_key)

    def get_id(self):
        return self.id

    def get_network(self):
        raise AssertionError("touched the network")


def test_exactly_one_end_of_each_relayed_link_starts_the_punch():
    hosts = [_Host(Identity.from_seed(bytes([i]) * 32)) for i in range(1, 9)]
    for a in hosts:
        for b in hosts:
            if a is not b:
                assert Puncher(a).starts(b.id) != Puncher(b).starts(a.id)


def test_the_end_that_does_not_start_stays_quiet_and_nobody_dials_alone_first():
    a, b = (_Host(Identity.from_seed(bytes([i]) * 32)) for i in (1, 2))
    quiet, starter = (Puncher(a), Puncher(b)) if Puncher(b).starts(a.id) else (Puncher(b), Puncher(a))
    other = b.id if quiet.host is a else a.id
    assert trio.run(quiet.initiate_hole_punch, other) is False
    assert quiet._hole_punch_attempts == {}  # no attempt spent, no stream, no dial
    assert trio.run(starter._try_unilateral_upgrade, other) is False
