"""Thespian's TCP transport unpickles whatever reaches its ports. Binding them to 127.0.0.1 keeps other
machines out, not other users of this one: a local user (or code running as the step user outside the
sandbox's network namespace, such as Chromium's browser process) sent a pickle to a root node's admin and
actor ports and it ran as root (this project's red team, 2026-12-07: `uid=0(root)` written three times).
Every frame between a node's actors now carries an HMAC under a key made at the node's start and held only
in the memory of its own forked processes; a frame without it is dropped before it is unpickled."""

from __future__ import annotations

import os
import pickle
import subprocess

import psutil
import pytest

from mesh.steps.ownports import listening_ports

from ..conftest import wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]


class Payload:
    """Unpickled, it runs a command: what the attacker wants run as the node's user."""

    def __init__(self, command: list[str]):
        self.command = command

    def __reduce__(self):
        return (subprocess.call, (self.command,))


def thespian_ports(node) -> set[int]:
    """Every port the node's process tree listens on but its API and peer port: the Thespian ones."""
    return set(listening_ports(node.proc.pid)) - {node.api_port, int(node.listen.rsplit(":", 1)[1])}


def as_nobody() -> None:
    """In the attacker's process: an unprivileged user's uid, as a local user would be."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)


def test_a_pickle_sent_to_a_nodes_thespian_ports_runs_nothing_and_its_actors_still_work(make_mesh, tmp_path):
    mesh = make_mesh(2, lambda i: ["--no-model", "--no-scrape"])
    submitter, node = mesh.nodes
    ports = wait_for(lambda: len(p := thespian_ports(node)) >= 3 and p, 30, "the node's actors' ports")
    marker = tmp_path / "ran-as-the-node"
    tmp_path.chmod(0o777)  # (so the payload could write there whoever it ran as)
    for port in sorted(ports):
        body = pickle.dumps(("attacker", Payload(["touch", str(marker)])))
        attack = ["/usr/bin/python3", "-c", "import socket, sys; s = socket.create_connection(('127.0.0.1', "
                  f"{port}), timeout=5); s.sendall(sys.stdin.buffer.read()); s.settimeout(3)\n"
                  "try: s.recv(100)\nexcept OSError: pass"]
        subprocess.run(attack, input=f"{len(body)}>".encode() + body, preexec_fn=as_nobody, timeout=30, check=True)
    assert not marker.exists(), f"a pickle sent to {sorted(ports)} ran as the node's user"
    # its actors still answer each other: a python step runs on it
    job = submitter.client.request("POST", "/jobs", {"job": {"name": "after", "redundancy": 1, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}}]}})["job_id"]
    rep = wait_for(lambda: (r := submitter.client.request("GET", f"/jobs/{job}?wait=30", timeout=60))["status"]
                   != "running" and r, 90, "the job to end")
    assert rep["status"] == "done" and rep["steps"]["a"]["output"] == 42, rep
    assert psutil.pid_exists(node.proc.pid)


FLOOD = 64 << 20  # bytes the attacker tries to make one Thespian port hold


def test_a_frame_announcing_gigabytes_is_cut_off_at_its_start_and_the_node_keeps_working(make_mesh, tmp_path):
    """The HMAC is checked once the whole frame has arrived: a local user who announced a frame of 4 GB
    could make each actor hold all it sent (red team F's open finding; `bytes +=` per read, so quadratic
    copying too). The length each frame announces is now sealed as well and checked in its first bytes:
    a frame whose length tag is not the node's is dropped with its connection before more is read."""
    mesh = make_mesh(2, lambda i: ["--no-model", "--no-scrape"])
    submitter, node = mesh.nodes
    ports = wait_for(lambda: len(p := thespian_ports(node)) >= 3 and p, 30, "the node's actors' ports")
    flood = ["/usr/bin/python3", "-c", "import socket, sys\n"
             "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
             "s.sendall(b'4000000000>')\nsent, chunk = 0, bytes(1 << 20)\n"
             f"try:\n    while sent < {FLOOD}:\n        s.sendall(chunk)\n        sent += len(chunk)\n"
             "except OSError:\n    pass\nprint(sent)"]
    taken = {}
    for port in sorted(ports):
        out = subprocess.run([*flood, str(port)], preexec_fn=as_nobody, timeout=60, check=True,
                             capture_output=True, text=True).stdout
        taken[port] = int(out)
    # what the kernel's socket buffers take before the reset comes back is a few MiB at most
    assert all(n < 16 << 20 for n in taken.values()), f"bytes each port read of a forged frame: {taken}"
    job = submitter.client.request("POST", "/jobs", {"job": {"name": "after", "redundancy": 1, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}}]}})["job_id"]
    rep = wait_for(lambda: (r := submitter.client.request("GET", f"/jobs/{job}?wait=30", timeout=60))["status"]
                   != "running" and r, 90, "the job to end")
    assert rep["status"] == "done" and rep["steps"]["a"]["output"] == 42, rep
