"""The owner's dashboard (/dashboard) in real headless Chromium against a real 4-node mesh (no model, TCP):
node0 submits, nodes 1 and 2 answer honestly, node 3 answers wrong and is outvoted. After a job that
pays, and one whose steps time out or raise, each node's page shows its peers, the steps it ran, the
credits it earned as a chart, its rejections, its limits, and every step that earned nothing with why;
clicking one shows why in words (`mesh ledger explain` for a ledger entry). The page is served like the
editor: without a token it asks for one, and under the same Content-Security-Policy."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest

from mesh.steps.cgroup import ROOT as CGROUP_ROOT

from ..conftest import cli_json, wait_for
from .browser import CHROMIUM, Page, new_page, shots_dir

pytestmark = [pytest.mark.mesh, pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")]

SEEN: dict[str, list[str]] = {"errors": [], "urls": [], "posts": []}  # across every page of the module
# node 1's python steps get a memory cap where the owner's memory group can be made: then its use is measured
MEMORY_V1 = ((CGROUP_ROOT / "memory" / "cgroup.procs").exists() and not (CGROUP_ROOT / "cgroup.controllers").exists()
             and os.geteuid() == 0)
HOSTILE = "<img id=pwned src=x>"  # a step's error: what a peer's code says reaches the page as text only
PAYING = {"name": "sums", "steps": [
    {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}},
    {"id": "b", "kind": "python", "params": {"code": "output = inputs['a'] + 1"}, "after": ["a"]}]}
FAILING = {"name": "bad", "timeout": 3, "max_replicas": 3, "steps": [
    {"id": "nap", "kind": "python", "params": {"code": "import time\ntime.sleep(30)\noutput = 1"}},
    {"id": "boom", "kind": "python", "params": {"code": f"raise ValueError({HOSTILE!r})"}}]}


def call(node, path: str, body: dict | None = None, token: str | None = "") -> tuple[int, dict, object]:
    """(status, headers, JSON or text) of a request to a node's API; token '' is the node's own, None none."""
    headers = {} if token is None else {"Authorization": f"Bearer {token or node.client.token}"}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(node.api + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=70) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, {k.lower(): v for k, v in hdrs.items()}, json.loads(raw)
    except ValueError:
        return status, {k.lower(): v for k, v in hdrs.items()}, raw.decode()


def run_job(node, job: dict, redundancy: int) -> dict:
    status, _, body = call(node, "/jobs", {"job": job, "redundancy": redundancy})
    assert status == 201, body
    return wait_for(lambda: (r := call(node, f"/jobs/{body['job_id']}?wait=30")[2])["status"] in ("done", "failed")
                    and r, 120, f"job {job['name']} to end")


def dashboard_data(node) -> dict:
    status, _, body = call(node, "/dashboard/data")
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
def dmesh(module_mesh):
    extra = {1: ["--max-memory", "512MiB", "--max-cpu", "50%"] if MEMORY_V1 else [], 2: ["--max-steps", "3"],
             3: ["--fault", "wrong"]}
    return module_mesh(4, lambda i: ["--no-model", "--transport", "tcp", *extra.get(i, [])])


@pytest.fixture(scope="module")
def worked(dmesh):
    """The two jobs, run once for the module: the paying one's receipts landed on both honest workers."""
    sub, honest, wrong = dmesh.nodes[0], dmesh.nodes[1:3], dmesh.nodes[3]
    paying = run_job(sub, PAYING, 3)
    assert paying["status"] == "done", paying
    assert {r["node"]: r["agreed"] for r in paying["steps"]["a"]["replicas"]}[wrong.node_id] is False
    failing = run_job(sub, FAILING, 1)
    assert failing["status"] == "failed", failing
    wait_for(lambda: all(dashboard_data(n)["steps"]["hour"]["paid"] == 2 for n in honest), 60,
             "both honest workers' receipts for steps a and b")
    return {"paying": paying, "failing": failing}


@pytest.fixture
def open_dashboard(loop, browser):
    """open_dashboard(node, token=True) → the node's /dashboard page once it has read the node (or, with no
    token, once it has said it needs one); pages are closed afterwards."""
    pages = []

    def go(node, token: bool = True) -> Page:
        page = loop.run_until_complete(new_page(browser, SEEN))
        pages.append(page)
        url = f"{node.api}/dashboard/" + (f"#token={node.client.token}" if token else "")
        loop.run_until_complete(page.goto(url, waitUntil="load"))
        ui = Page(loop, page)
        ui.wait("() => document.body.dataset.ready === 'true'" + (" && document.body.dataset.loaded" if token else ""), 20)
        return ui

    yield go
    for page in pages:
        loop.run_until_complete(page.close())


def rows(ui: Page, table: str) -> list[list[str]]:
    return ui.js("t => [...document.querySelectorAll(`#${t} tbody tr`)].map(r => [...r.cells].map(c => c.textContent))",
                 table)


def items(ui: Page, list_id: str) -> list[dict]:
    return ui.js("l => [...document.querySelectorAll(`#${l} li:not(.empty)`)].map(li => ({reason: li.dataset.reason, "
                 "entry: li.dataset.entry || null, text: li.textContent}))", list_id)


def click_item(ui: Page, list_id: str, index: int) -> str:
    """Click the `index`th item of a list; the explanation the page then shows."""
    ui.run(ui.page.evaluate("(l, i) => document.querySelectorAll(`#${l} li`)[i].scrollIntoView()", list_id, index))
    handles = ui.run(ui.page.querySelectorAll(f"#{list_id} li"))
    ui.run(handles[index].click())
    ui.wait("() => document.querySelector('#explain').dataset.ready === 'true'", 10)
    return ui.text("#explain")


@pytest.mark.timeout(240)
def test_without_the_token_the_dashboard_behaves_as_the_editor(dmesh, open_dashboard):
    node = dmesh.nodes[0]
    for path, editor in (("/dashboard/", "/editor/"), ("/dashboard", "/editor"),
                         ("/dashboard/dashboard.js", "/editor/editor.js")):
        d_status, d_headers, _ = call(node, path, token=None)
        e_status, e_headers, _ = call(node, editor, token=None)
        assert d_status == e_status == 200, (path, d_status, e_status)
        for header in ("content-security-policy", "x-frame-options", "x-content-type-options"):
            assert d_headers[header] == e_headers[header], header
    assert "script-src" not in d_headers["content-security-policy"]  # default-src 'self': no inline script
    assert d_headers["content-security-policy"].startswith("default-src 'self'")
    for token in (None, "wrong"):
        for path in ("/dashboard/data", "/ledger/explain/1"):
            status, _, body = call(node, path, token=token)
            assert status == 401 and "token" in body["error"], (path, token, status, body)

    before = len(SEEN["urls"])
    ui = open_dashboard(node, token=False)
    assert ui.js("() => !document.querySelector('#token-box').hidden")
    assert ui.message() == "paste the node API token (<node home>/api-token) into the Token field"
    assert not [u for u in SEEN["urls"][before:] if "/dashboard/data" in u or "/status" in u]  # nothing asked
    ui.type_into("#token", node.client.token)
    ui.run(ui.page.keyboard.press("Tab"))  # the field's change event: the page reads the node
    ui.wait("() => document.body.dataset.loaded", 20)
    assert ui.js("() => document.querySelector('#token-box').hidden")
    assert rows(ui, "peers")


@pytest.mark.timeout(300)
def test_an_honest_worker_sees_its_peers_steps_credits_and_limits(dmesh, worked, open_dashboard, tmp_path):
    node = dmesh.nodes[1]
    ui = open_dashboard(node)
    peers = rows(ui, "peers")
    assert sorted(ui.js("() => [...document.querySelectorAll('#peers tbody tr')].map(r => r.dataset.node)")) == \
        sorted(n.node_id for n in dmesh.nodes if n is not node)
    assert all(r[1] == "up" and r[2] == "direct" for r in peers), peers
    assert rows(ui, "kinds") == [["direct", "3"]]
    assert ui.text("#reachability") == f"reachability: {call(node, '/status')[2]['reachability']}"
    assert ui.js("() => document.querySelector('#fault').hidden")

    hour, day = rows(ui, "steps")
    assert hour[0] == "last hour" and day[0] == "last day"
    assert int(hour[1]) >= 2 and int(hour[4]) == 2 and float(hour[5]) > 0, hour  # ok, paid, credits
    assert hour[1:] == day[1:]

    points = ui.js("() => [...document.querySelectorAll('#chart svg circle.point')].map(c => Number(c.dataset.credits))")
    assert points and points == sorted(points) and points[-1] == pytest.approx(float(hour[5]), abs=1e-4)
    assert ui.js("() => document.querySelector('#chart svg polyline.line').getAttribute('points').split(' ').length") >= 3
    assert float(ui.text("#credits-total")) == pytest.approx(points[-1], abs=1e-4)

    assert ui.js("() => document.querySelector('#rejected tbody tr')") is not None
    limits = ui.js("() => Object.fromEntries([...document.querySelectorAll('#limits .meter')].map("
                   "m => [m.dataset.limit, m.textContent]))")
    status = call(node, "/status")[2]
    assert limits["step slots"].endswith(f"0 of {status['max_steps']} in use"), limits
    if MEMORY_V1:
        assert status["max_memory"] == 512 << 20 and status["max_cpu"] == 0.5
        assert limits["memory (python steps, Chromium)"].endswith("MiB of 512 MiB"), limits
        assert "(cap 50% of the CPUs)" in limits["CPU"] or limits["CPU"].endswith("cap 50% of the CPUs; use not "
                                                                                   "measured yet"), limits
        call(node, "/dashboard/data")  # (the CPU share is measured between two looks)
        share = call(node, "/dashboard/data")[2]["use"]["cpu"]
        assert isinstance(share, float) and 0 <= share <= 1, share
    else:
        assert limits["CPU"].endswith("no cap; use not measured yet"), limits
        assert limits["memory (python steps, Chromium)"].endswith("no cap; use not measured"), limits
    assert not [i for i in items(ui, "unearned") if i["reason"] == "not paid"]  # paid for both its answers
    ui.screenshot(shots_dir(tmp_path) / "dashboard-worker.png", full=True)


@pytest.mark.timeout(300)
def test_the_outvoted_worker_sees_its_unpaid_steps_and_why(dmesh, worked, open_dashboard, tmp_path):
    node, sub = dmesh.nodes[3], dmesh.nodes[0]
    ui = open_dashboard(node)
    assert ui.text("#fault") == "fault: wrong"
    unpaid = [i for i in items(ui, "unearned") if i["reason"] == "not paid"]
    assert len(unpaid) == 2 and all(i["entry"] is None for i in unpaid), unpaid
    assert {f"python step {s} of job {worked['paying']['job_id'][:12]} for {sub.node_id[:12]}" for s in "ab"} == \
        {i["text"].split("not paid", 1)[1] for i in unpaid}
    hour = rows(ui, "steps")[0]
    assert int(hour[1]) >= 2 and hour[4] == "0" and ui.text("#chart .empty") == "nothing earned yet"
    index = [i["reason"] for i in items(ui, "unearned")].index("not paid")
    text = click_item(ui, "unearned", index)
    assert "holds no receipt for it" in text and "an outvoted answer is never paid" in text, text
    ui.screenshot(shots_dir(tmp_path) / "dashboard-outvoted.png", full=True)


@pytest.mark.timeout(300)
def test_a_failed_step_reads_as_text_on_the_worker_that_ran_it(dmesh, worked, open_dashboard, tmp_path):
    """A step's error comes from a peer's code: shown as text, never parsed as HTML."""
    ran = next(n for n in dmesh.nodes[1:] if any(HOSTILE in i["error"] for i in dashboard_data(n)["unearned"]))
    ui = open_dashboard(ran)
    index = next(k for k, i in enumerate(items(ui, "unearned")) if i["reason"] == "failed" and "boom" in i["text"])
    text = click_item(ui, "unearned", index)
    assert HOSTILE in text and "This node ran python step 'boom'" in text, text
    assert ui.js("() => document.querySelector('#pwned')") is None
    ui.screenshot(shots_dir(tmp_path) / "dashboard-failed.png", full=True)


@pytest.mark.timeout(300)
def test_the_submitter_sees_what_it_paid_nothing_for_and_the_ledger_explains_it(dmesh, worked, open_dashboard,
                                                                                 tmp_path):
    sub, wrong = dmesh.nodes[0], dmesh.nodes[3]
    ui = open_dashboard(sub)
    judged = items(ui, "judged")
    outvoted = [i for i in judged if i["reason"] == "outvoted"]
    assert len(outvoted) == 2 and all(wrong.node_id[:12] in i["text"] for i in outvoted), judged
    assert any(i["reason"] == "timed out" and "nap" in i["text"] for i in judged), judged
    assert rows(ui, "steps")[0][1:5] == ["0", "0", "0", "0"]  # it ran nothing for peers
    peers = {r[0]: r for r in rows(ui, "peers")}
    assert float(peers[wrong.node_id[:12]][3]) < min(float(peers[n.node_id[:12]][3]) for n in dmesh.nodes[1:3])

    index = [i["reason"] for i in judged].index("outvoted")
    text = click_item(ui, "judged", index)
    entry = judged[index]["entry"]
    said = cli_json("ledger", "explain", entry, "--home", str(sub.home))
    status, _, body = call(sub, f"/ledger/explain/{entry}")
    assert status == 200 and body == said, (body, said)
    assert text == said["explanation"] and "loses reputation" in text and wrong.node_id[:12] in text
    assert ui.text("#explain-what") == f"entry {entry}"
    ui.screenshot(shots_dir(tmp_path) / "dashboard-submitter.png", full=True)

    assert call(sub, "/ledger/explain/999999")[0] == 404
    assert call(sub, "/ledger/explain/abc")[0] == 422


@pytest.mark.timeout(60)
def test_no_console_errors_and_no_requests_to_other_hosts():
    assert SEEN["urls"], "no requests were recorded"
    hosts = {urlparse(u).hostname for u in SEEN["urls"] if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, hosts
    assert not SEEN["posts"], SEEN["posts"]  # the dashboard only reads
    assert not SEEN["errors"], SEEN["errors"]
