"""The NAT test topology behaves like the internet with two home routers: LAN hosts reach the public host,
nothing unsolicited gets in (silently dropped, or reset by a hostile NAT), the two LANs cannot reach each
other directly, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .nettopo import Topology, cleanup, skip_unless_available

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(60)]

PREFIX = "hmtt"

# Echo server: prints "ready", then for each connection sends "<peer ip>\n" and echoes what it receives.
SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8); print("ready", flush=True)
while True:
    c, peer = s.accept()
    with c:
        c.sendall(peer[0].encode() + b"\n")
        while data := c.recv(4096):
            c.sendall(data)
"""

# Client: connect with a timeout, send argv[4], print "ok <peer line> <echo>" or the failure kind.
CLIENT = r"""
import socket, sys
host, port, timeout, msg = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].encode()
try:
    c = socket.create_connection((host, port), timeout=timeout)
except TimeoutError:
    print("timeout"); sys.exit()
except ConnectionRefusedError:
    print("refused"); sys.exit()
except OSError as e:
    print("error", e.errno); sys.exit()
f = c.makefile("rb"); seen = f.readline().strip().decode()
c.sendall(msg); echo = f.read(len(msg)).decode()
print("ok", seen, echo)
"""


# Simultaneous open from a fixed port: bind argv[3], connect to argv[1]:argv[2] (retrying on a reset until
# argv[4] seconds pass), print "ok" or the last failure. Two of these aimed at each other are a TCP hole punch.
PUNCH = r"""
import socket, sys, time
host, port, local, until = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
last = "timeout"
while time.monotonic() < until:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", local))
    s.settimeout(max(0.1, until - time.monotonic()))
    try:
        s.connect((host, port)); print("ok"); sys.exit()
    except TimeoutError:
        last = "timeout"
    except OSError as e:
        last = f"error {e.errno}"; time.sleep(0.05)
    finally:
        s.close()
print(last)
"""


def serve(t: Topology, ns: str, port: int) -> subprocess.Popen:
    proc = t.popen(ns, sys.executable, "-u", "-c", SERVER, str(port), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def dial(t: Topology, ns: str, host: str, port: int, timeout: float = 1.5, msg: str = "hi") -> tuple[str, float]:
    t0 = time.monotonic()
    res = t.run(ns, sys.executable, "-c", CLIENT, host, str(port), str(timeout), msg, check=True)
    return res.stdout.strip(), time.monotonic() - t0


def our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{PREFIX}{os.getpid()}_")]


def test_lan_reaches_public_host_through_nat():
    with Topology(PREFIX) as t:
        serve(t, "pub", 7000)
        for lan, router_ip in (("lan1", t.r1_ip), ("lan2", t.r2_ip)):
            out, _ = dial(t, lan, t.pub_ip, 7000, msg="hello")
            assert out == f"ok {router_ip} hello"         # the public host sees the router's address


@pytest.mark.parametrize("nat", ["drop", "reset"])
def test_public_host_cannot_open_connection_into_lan(nat):
    with Topology(PREFIX, nat=nat) as t:
        serve(t, "lan1", 7001)
        assert dial(t, "lan1", "127.0.0.1", 7001)[0].startswith("ok")    # the server is really there
        # Even with a route to the private network (a neighbour on the same ISP segment), nothing gets in.
        t.run("pub", "ip", "route", "add", "10.1.0.0/24", "via", t.r1_ip, check=True)
        for target in (t.r1_ip, t.lan1_ip):
            out, took = dial(t, "pub", target, 7001, timeout=1.0)
            if nat == "drop":
                assert out == "timeout", (target, out)
            else:
                assert out == "refused" and took < 0.9, (target, out, took)


def test_lans_cannot_reach_each_other_directly():
    with Topology(PREFIX) as t:
        serve(t, "lan2", 7002)
        out, _ = dial(t, "lan1", t.lan2_ip, 7002, timeout=1.0)      # private address: no route anywhere
        assert not out.startswith("ok"), out
        out, _ = dial(t, "lan1", t.r2_ip, 7002, timeout=1.0)        # lan2's public address: unsolicited
        assert out == "timeout", out


def test_mixed_nats_per_router():
    with Topology(PREFIX, nat=("drop", "reset")) as t:
        serve(t, "lan1", 7003)
        serve(t, "lan2", 7003)
        assert dial(t, "pub", t.r1_ip, 7003, timeout=1.0)[0] == "timeout"
        assert dial(t, "pub", t.r2_ip, 7003, timeout=1.0)[0] == "refused"


@pytest.mark.parametrize("nat", ["drop", "reset"])
def test_a_tcp_hole_punch_gets_through_drop_nats_and_never_through_reset_nats(nat):
    """What DCUtR does, bare: both LAN hosts dial the other's router from the port they dial out of. Drop NATs
    keep that port, so each SYN finds the mapping the other's made; reset NATs map each connection to a random
    port (and reset what matches none), so no timing of the two SYNs ever meets."""
    with Topology(PREFIX, nat=nat) as t:
        ends = [t.popen(lan, sys.executable, "-c", PUNCH, peer, "7006", "7006", "4", stdout=subprocess.PIPE, text=True)
                for lan, peer in (("lan1", t.r2_ip), ("lan2", t.r1_ip))]
        got = [p.communicate(timeout=20)[0].strip() for p in ends]
        if nat == "drop":
            assert got == ["ok", "ok"], got
        else:
            assert "ok" not in got, got


def test_capture_sees_plaintext_on_the_internet_link(tmp_path):
    with Topology(PREFIX) as t:
        serve(t, "pub", 7004)
        with t.capture(tmp_path / "wan.cap") as cap:
            assert dial(t, "lan1", t.pub_ip, 7004, msg="PLAINTEXT-canary-42")[0].startswith("ok")
        assert cap.read().count(b"PLAINTEXT-canary-42") >= 2     # request and echo both crossed the wan


def test_teardown_removes_everything_even_on_failure():
    with Topology(PREFIX) as t:
        assert len(our_namespaces()) == 6
        server = serve(t, "pub", 7005)
    assert our_namespaces() == [] and server.poll() is not None

    with pytest.raises(RuntimeError, match="boom"):
        with Topology(PREFIX):
            raise RuntimeError("boom")
    assert our_namespaces() == []


def test_cleanup_removes_stale_namespaces_of_dead_runs():
    skip_unless_available()
    stale = f"{PREFIX}{4194304 + os.getpid()}_0-wan"     # above the kernel's pid_max: certainly a dead run
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        with Topology(PREFIX) as t:
            cleanup(PREFIX)              # (a parallel run may have removed it first: check the outcome)
            names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert stale not in names
            assert all(ns in names for ns in t.names.values())     # live namespaces are kept
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=10)
