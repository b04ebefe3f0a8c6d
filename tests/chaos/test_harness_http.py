"""The chaos client's API call: a node killed while it answers is unreachable, not a crash of the client
(a clean-clone run lost all eight chaos checks to one IncompleteRead)."""

from __future__ import annotations

import socket
import threading

import pytest

from .harness import Unreachable, http

pytestmark = pytest.mark.timeout(30)


def test_an_answer_cut_short_by_a_kill_is_unreachable():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer_half_and_die() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1387\r\n\r\n{\"a\":")
        conn.close()

    t = threading.Thread(target=answer_half_and_die)
    t.start()
    try:
        with pytest.raises(Unreachable, match="IncompleteRead"):
            http((f"http://127.0.0.1:{srv.getsockname()[1]}", "token"), "GET", "/jobs/x", timeout=5)
    finally:
        t.join(timeout=5)
        srv.close()
