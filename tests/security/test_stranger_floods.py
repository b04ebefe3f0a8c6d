"""What a stranger with free keys and no id work can do to a node's memory and logs (found by an attack
on the running node, 2026-12-05):

- 10,400 throw-away keys, one `bye` each stamped 115 s ahead (two keys a plain TCP link, the second
  taken before the link was dropped for it), pushed every linked peer out of the replay memory and had
  every newcomer refused as a replay for two minutes. Now only peers the node took can push peers out,
  and a forgotten peer's stamps count only up to the moment it was forgotten.
- A peer's record with a newline and ESC sequences in its address and kinds forged lines in node.log and
  reached the operator's terminal; a step's job id likewise. Records carry names only now, and node.log
  escapes every control character of a message.
- A key that sent no hello wrote a WARNING to node.log for every envelope, 200 a second a link, into a
  file never rotated. Now it is logged once a link, its link is dropped after a few, and node.log rotates.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mesh.wire.envelope import Sealer
from mesh.wire.identity import Identity
from mesh.wire.messages import Bye, Hello, StepRequest
from mesh.wire.records import make_record

from ..conftest import wait_for
from .hostile import NETWORK, HostilePeer, now_ms, rejected, split_addr, status, wait_rejection

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]
KEYS = 10_400  # past the 10,000 senders the receiver kept in one pool (MAX_SENDERS; strangers: MAX_STRANGERS)

FORGED = "2099-01-01 00:00:00,000 WARNING mesh.node.gateway FORGED-LINE peer deadbeef penalised"


def flood_keys(addr: str, victim: bytes, n: int, ahead_ms: int, per_link: int = 2, links: int = 4) -> float:
    """`n` fresh keys (no id work, no record), one `bye` each stamped `ahead_ms` into the future,
    `per_link` keys a connection, over `links` threads; returns the seconds it took."""
    keys = [Identity.generate(bits=0) for _ in range(n)]
    groups = [keys[i:i + per_link] for i in range(0, n, per_link)]

    def send(chunk: list[list[Identity]]) -> None:
        for group in chunk:
            ts = now_ms() + ahead_ms
            data = b"".join(Sealer(k, NETWORK).seal("bye", victim, Bye(), ts) for k in group)
            try:
                with socket.create_connection(split_addr(addr), timeout=5) as s:
                    s.sendall(data)
                    s.settimeout(5)
                    while s.recv(4096):
                        pass
            except OSError:
                pass  # dropped by the node: what it does with a second key on one link

    t0 = time.monotonic()
    threads = [threading.Thread(target=send, args=(groups[i::links],)) for i in range(links)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def key_of(node) -> bytes:
    return bytes.fromhex(status(node)["key"])


def lone_node(make_mesh):
    """One node on plain TCP (a hostile peer speaks to it with a socket), and its key."""
    node = make_mesh(1, lambda i: ["--no-model", "--transport", "tcp"]).nodes[0]
    return node, key_of(node)


def peer_state(node, other_id: str) -> dict:
    return next((p for p in status(node)["peers"] if p["node"] == other_id), {})


def test_throwaway_keys_stamped_ahead_unlink_no_peer_and_keep_no_newcomer_out(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"])
    victim, linked = mesh.nodes
    wait_for(lambda: peer_state(victim, linked.node_id).get("state") == "up", 60, "the two nodes to link")
    before = rejected(victim)
    took = flood_keys(victim.listen, key_of(victim), KEYS, ahead_ms=115_000)
    print(f"{KEYS} keys in {took:.1f} s; rejected since: "
          f"{ {k: v - before.get(k, 0) for k, v in rejected(victim).items() if v != before.get(k, 0)} }")
    # a newcomer joins through the victim, and the linked peer is still heard (its heartbeats taken)
    newcomer = make_mesh(1, lambda i: ["--no-model", "--transport", "tcp", "--bootstrap", victim.listen],
                         name="newcomer").nodes[0]
    wait_for(lambda: peer_state(victim, newcomer.node_id).get("state") == "up", 30,
             "the newcomer's hello to be taken (refused as a replay for two minutes before)")
    seen = peer_state(victim, linked.node_id)
    assert seen.get("state") == "up" and seen.get("connected"), seen
    assert rejected(victim).get("replay", 0) == before.get("replay", 0), rejected(victim)


def test_a_peers_record_and_job_ids_write_no_line_and_no_escape_into_the_log(make_mesh):
    node, me = lone_node(make_mesh)
    before = rejected(node)
    with HostilePeer(node.listen, transport="tcp") as evil:  # its record: a newline and ESC in address and kinds
        rec = make_record(evil.identity, evil.network, "evil\n" + FORGED + "\x1b[31m:4750",
                          ["python\n" + FORGED + "\x1b]0;pwned\x07\x1b[2J"], [], True, now_ms())
        evil.send(evil.seal("hello", bytes(32), Hello(rec, [])))
        wait_rejection(node, "bad-record", before, evil.label)
    with HostilePeer(node.listen, transport="tcp") as evil:  # an honest record, and a job id with a line in it
        evil.send(evil.hello_frame())
        assert evil.expect(lambda f: f["kind"] == "hello", 10)
        job = "j\n" + FORGED[:40] + "\x1b[2J"
        for _ in range(2):  # asked twice: the second is logged with its ids
            evil.send(evil.seal("step", me, StepRequest(job, "s", "python", {"code": "output = 1"}, 30.0)))
            assert evil.expect(lambda f: f["kind"] == "result", 30)
            evil.received.clear()
    text = wait_for(lambda: (t := (node.home / "node.log").read_text(errors="replace")) and "asked again" in t and t,
                    15, "the repeated step in node.log")
    assert "\x1b" not in text
    assert not [ln for ln in text.splitlines() if ln.startswith("2099-01-01")], "a forged line in node.log"
    assert "j\\x0a2099-01-01" in text  # the job id is there, escaped


def test_a_key_that_sends_no_hello_is_logged_once_a_link_and_dropped(make_mesh):
    node, me = lone_node(make_mesh)
    log = node.home / "node.log"
    size, before = log.stat().st_size, rejected(node)
    with HostilePeer(node.listen, transport="tcp") as evil:
        for _ in range(10):  # 400 envelopes in 2 s: within the link's rate
            try:
                evil.send_raw(b"".join(evil.seal("bye", me, Bye("x")) for _ in range(40)))
            except OSError:
                break  # the node closed the link
            time.sleep(0.2)
        assert evil.closed_by_node(10), "the link of a key that sent no hello was kept"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if evil.label in ln]
    assert 1 <= len(lines) <= 3, lines
    assert rejected(node).get("unknown-peer", 0) - before.get("unknown-peer", 0) >= 20
    assert log.stat().st_size - size < 4000


def test_a_step_request_with_ids_past_64_characters_is_refused_before_it_is_run_or_kept(make_mesh):
    """A stranger's steps with 450 KB job and step ids ran, and the worker kept both ids until paid (its
    owed table, on disk): 114 MB of journal in 60 steps. Refused as bad-schema now, never run."""
    node, me = lone_node(make_mesh)
    journal = node.home / "journal.db"
    size, before = journal.stat().st_size, rejected(node)
    with HostilePeer(node.listen, transport="tcp") as evil:
        evil.handshake()
        for job, step in (("J" * 450_000, "s"), ("j", "S" * 65)):
            evil.send(evil.seal_raw("step", me, {"job": job, "step": step, "kind": "python",
                                                 "params": {"code": "output = 1"}, "timeout": 30.0}))
        wait_rejection(node, "bad-schema", before, evil.label, at_least=2)
        assert evil.expect(lambda f: f["kind"] == "result", 3.0) is None, "a step with an over-long id was run"
    assert journal.stat().st_size - size < 100_000


def test_a_signed_number_too_large_for_a_float_is_refused_as_bad_schema(make_mesh):
    """A step whose timeout is 10**400 (JSON integers have no size limit) raised OverflowError out of the
    receiver, past its checks (found by a credit attack, 2026-12-05): now counted as bad-schema, and the
    link still carries the peer's next, honest step."""
    node, me = lone_node(make_mesh)
    before = rejected(node)
    with HostilePeer(node.listen, transport="tcp") as evil:
        evil.send(evil.hello_frame())
        assert evil.expect(lambda f: f["kind"] == "hello", 10)
        evil.send(evil.seal_raw("step", me, {"job": "j", "step": "big", "kind": "python",
                                             "params": {"code": "output = 1"}, "timeout": 10 ** 400}))
        wait_rejection(node, "bad-schema", before, evil.label)
        evil.send(evil.seal("step", me, StepRequest("j", "ok", "python", {"code": "output = 1"}, 30.0)))
        got = evil.expect(lambda f: f["kind"] == "result" and f["payload"]["step"] == "ok", 30)
        assert got is not None and got["payload"]["ok"], got


def test_a_scrape_request_with_a_selector_beautifulsoup_cannot_parse_is_refused_at_once(make_mesh):
    """`[[[` raised out of the worker's task after the page was fetched: no answer, and the requester
    waited its whole timeout (found by this session's sandbox attacker). Now refused before anything runs."""
    node, me = lone_node(make_mesh)
    with HostilePeer(node.listen, transport="tcp") as evil:
        evil.send(evil.hello_frame())
        assert evil.expect(lambda f: f["kind"] == "hello", 10)
        t = time.monotonic()
        evil.send(evil.seal("step", me, StepRequest("j", "s", "scrape", {"url": "https://example.com/",
                                                                       "selectors": {"bad": "[[["}}, 60.0)))
        got = evil.expect(lambda f: f["kind"] == "result" and f["payload"]["step"] == "s", 30)
        assert got is not None and not got["payload"]["ok"], got
        assert "refused: selectors: '[[[' is not a CSS selector" in got["payload"]["error"], got
        assert time.monotonic() - t < 10
