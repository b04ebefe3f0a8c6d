"""Text from the mesh reaches the user's terminal: a worker's error, a step's output, a page's title. A
control character in it would be obeyed by the terminal (ESC ] 0 sets the window title, ESC [ 2 J clears
the screen, a right-to-left override reorders what is read). Here step code on real workers puts them
in its output and in its error (what any hostile worker could send as well), and the CLI's human output
must show them as escapes, never the bytes."""

from __future__ import annotations

import pytest

from mesh.cli.terminal import printable

from ..conftest import run_cli, write_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]

NASTY = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil"


def raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f or c == "\u202e"]


def test_printable_escapes_every_control_but_newline_and_tab():
    assert printable("a\tb\nc" + NASTY) == "a\tb\nc\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202eevil"
    assert raw_controls(printable("".join(map(chr, range(0x200))))) == []


def test_a_steps_output_and_error_reach_the_terminal_as_escapes(make_mesh, tmp_path):
    mesh = make_mesh(3, lambda i: ["--no-model", "--transport", "tcp"])
    home = str(mesh.nodes[0].home)
    out = write_job(tmp_path / "out.json", [{"id": "a", "kind": "python", "params": {"code": f"output = {NASTY!r}"}}])
    res = run_cli("submit", out, "--home", home, "--redundancy", "2", "--wait")
    assert res.returncode == 0, res.stderr
    assert raw_controls(res.stdout + res.stderr) == [] and "\\x1b]0;pwned" in res.stdout, res.stdout
    bad = write_job(tmp_path / "bad.json", [{"id": "a", "kind": "python",
                                             "params": {"code": f"raise ValueError({NASTY!r})"}}])
    res = run_cli("submit", bad, "--home", home, "--redundancy", "2", "--wait")
    assert res.returncode == 3, res.stderr
    assert raw_controls(res.stdout + res.stderr) == [] and "\\x1b[2J" in res.stdout, res.stdout + res.stderr
    job = res.stdout.split()[1]
    shown = run_cli("job", job, "--home", home)
    assert raw_controls(shown.stdout + shown.stderr) == [] and "\\u202eevil" in shown.stdout, shown.stdout
