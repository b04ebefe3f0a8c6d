"""The visual editor (/editor) in real headless Chromium against a real 4-node mesh: build a DAG by
dragging and linking boxes with the mouse, edit it through the generated forms and run it at redundancy 3;
undo and redo; load and save job files; the checks that stop a cycle or a missing parameter before
anything is sent; planning from a question; and no console errors or requests to other hosts."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mesh.steps.models import DEFAULT_MODEL, default_model_sha

from ..conftest import wait_for
from .browser import CHROMIUM, Page, new_page, shots_dir

pytestmark = [pytest.mark.mesh, pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")]

SEEN: dict[str, list[str]] = {"errors": [], "urls": [], "posts": []}  # across every page of the module


@pytest.fixture
def ui(loop, browser, node, tmp_path):
    """A fresh editor page (token in the URL fragment), ready once the palette is built."""
    page = loop.run_until_complete(open_editor(browser, node, tmp_path / "downloads"))
    yield Ui(loop, page)
    loop.run_until_complete(page.close())


async def open_editor(browser, node, download_dir: Path):
    page = await new_page(browser, SEEN)
    await page._client.send("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    await page.goto(f"{node.api}/editor/#token={node.client.token}", waitUntil="load")
    await page.waitForSelector("body[data-ready=true] .palette-item", timeout=20_000)
    return page


class Ui(Page):
    """The editor page plus the mouse gestures a person makes in it."""

    def drop_step(self, kind: str, dx: float, dy: float) -> str:
        """Drag a palette item onto the canvas at (dx, dy) from its top-left corner; the new box's id."""
        before = set(self.step_ids())
        box = self.run(self._box("#canvas"))
        self.drag(self.center(f".palette-item[data-kind={kind}]"), (box["x"] + dx, box["y"] + dy))
        self.wait("n => document.querySelectorAll('.drawflow-node').length === n", 5, len(before) + 1)
        (new,) = set(self.step_ids()) - before
        return new

    def connect(self, src: str, dst: str) -> None:
        links = self.js("() => document.querySelectorAll('.connection').length")
        self.drag(self.center(f".drawflow-node[data-step={src}] .output"),
                  self.center(f".drawflow-node[data-step={dst}] .input"))
        self.wait("n => document.querySelectorAll('.connection').length === n", 5, links + 1)

    def select(self, step: str) -> None:
        self.click(f".drawflow-node[data-step={step}] .box-title")
        self.wait("id => document.querySelector('#f-id') && document.querySelector('#f-id').value === id", 5, step)

    def step_ids(self) -> list[str]:
        return self.js("() => [...document.querySelectorAll('.drawflow-node')].map(b => b.dataset.step)")

    def job(self) -> dict:
        return self.js("() => window.homemesh.toJob()")


def jobs_count(node) -> int:
    req = urllib.request.Request(node.api + "/jobs", headers={"Authorization": f"Bearer {node.client.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return len(json.loads(resp.read()))


def steps_of(job: dict) -> list[dict]:
    return [{"id": s["id"], "kind": s["kind"], "params": s.get("params", {}), "after": s.get("after", [])}
            for s in job["steps"]]


@pytest.mark.timeout(180)
def test_build_a_dag_with_the_mouse_and_run_it_at_redundancy_3(ui, mesh, tmp_path):
    shots = shots_dir(tmp_path)
    a = ui.drop_step("python", 40, 60)
    b = ui.drop_step("python", 290, 220)
    c = ui.drop_step("llm", 510, 390)
    assert (a, b, c) == ("a", "b", "c")
    ui.connect("a", "b")
    ui.connect("b", "c")

    ui.select("a")
    ui.type_into("[data-param=code]", "output = 6 * 7")
    ui.select("b")
    ui.type_into("[data-param=code]", "output = inputs['a'] + 1")
    ui.select("c")
    ui.type_into("[data-param=prompt]", "The number {b.output} is")
    ui.type_into("[data-param=max_tokens]", "16")
    ui.run(ui.page.click("#redundancy", {"clickCount": 3}))
    ui.run(ui.page.keyboard.type("3"))
    ui.click("#job-name")  # leave the field

    job = ui.job()
    assert job["redundancy"] == 3 and job["quorum"] == "majority"
    assert steps_of(job) == [
        {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}, "after": []},
        {"id": "b", "kind": "python", "params": {"code": "output = inputs['a'] + 1"}, "after": ["a"]},
        {"id": "c", "kind": "llm", "params": {"prompt": "The number {b.output} is", "max_tokens": 16},
         "after": ["b"]}]
    assert ui.js("() => document.querySelector('.drawflow-node[data-step=c] .box-preview').textContent") \
        == "The number {b.output} is"
    ui.screenshot(shots / "editor.png")

    ui.click("#run")
    ui.wait("() => document.querySelectorAll('.drawflow-node[data-state=done]').length === 3", 120)
    ui.wait("() => window.homemesh.lastRun && document.querySelector('#credits').dataset.credits", 10)
    report = ui.js("() => window.homemesh.lastRun")
    assert report["status"] == "done"
    assert report["steps"]["a"]["output"] == 42 and report["steps"]["b"]["output"] == 43
    assert float(ui.js("() => document.querySelector('#credits').dataset.credits")) > 0
    assert "done" in ui.message()

    workers = {n.node_id for n in mesh.nodes[1:]}
    for sid in "abc":
        reps = ui.js("id => [...document.querySelectorAll(`.drawflow-node[data-step=${id}] .rep`)].map("
                     "r => [r.dataset.node, r.dataset.agreed, r.textContent])", sid)
        assert len(reps) == 3, reps
        assert {r[0] for r in reps} <= workers
        assert all(r[1] == "true" and r[2] == f"{r[0][:8]} ✓" for r in reps), reps
        assert ui.js("id => document.querySelector(`.drawflow-node[data-step=${id}] .badge`).textContent", sid) == "done"

    ui.select("c")  # its output opens in the side panel
    ui.wait("() => document.querySelector('#output').dataset.ready === 'true'", 5)
    shown = ui.js("() => document.querySelector('#output').textContent")
    assert shown == report["steps"]["c"]["output"] and shown.strip()
    assert ui.js("() => document.querySelectorAll('#replicas tbody tr').length") == 3
    assert ui.js("() => document.querySelector('#run-model').textContent") == (  # which model answered
        f"model: {DEFAULT_MODEL} ({default_model_sha()[:12]}), the default for llm steps")
    ui.select("b")
    assert ui.js("() => document.querySelector('#run-model').textContent") == ""  # (python: no model)
    ui.screenshot(shots / "editor-run.png")


@pytest.mark.timeout(60)
def test_undo_and_redo_a_new_box(ui):
    ui.click(".palette-item[data-kind=python]")  # a click adds a box too
    ui.wait("() => document.querySelectorAll('.drawflow-node').length === 1", 5)
    ui.click("#undo")
    ui.wait("() => document.querySelectorAll('.drawflow-node').length === 0", 5)
    ui.click("#redo")
    ui.wait("() => document.querySelectorAll('.drawflow-node[data-step=a]').length === 1", 5)
    ui.drop_step("llm", 300, 200)
    ui.connect("a", "b")
    ui.run(ui.page.keyboard.down("Control"))
    ui.run(ui.page.keyboard.press("z"))
    ui.run(ui.page.keyboard.up("Control"))
    ui.wait("() => document.querySelectorAll('.connection').length === 0", 5)
    assert ui.step_ids() == ["a", "b"]
    ui.click("#redo")
    ui.wait("() => document.querySelectorAll('.connection').length === 1", 5)
    assert steps_of(ui.job())[1]["after"] == ["a"]
    ui.select("b")
    ui.click("#delete")
    ui.wait("() => document.querySelectorAll('.drawflow-node').length === 1", 5)
    ui.click("#undo")
    ui.wait("() => document.querySelectorAll('.connection').length === 1", 5)
    assert ui.step_ids() == ["a", "b"]


@pytest.mark.timeout(60)
def test_renaming_a_step_updates_the_references_to_it(ui):
    ui.drop_step("python", 40, 60)
    ui.drop_step("llm", 340, 200)
    ui.select("b")
    ui.type_into("[data-param=prompt]", "Twice {a.output} is")
    ui.click("#job-name")
    ui.wait("() => document.querySelectorAll('.connection').length === 1", 5)  # the reference implies the link
    ui.select("a")
    ui.run(ui.page.click("#f-id", {"clickCount": 3}))
    ui.run(ui.page.keyboard.type("numbers"))
    ui.click("#job-name")
    ui.wait("() => document.querySelector('.drawflow-node[data-step=numbers]')", 5)
    assert steps_of(ui.job())[1] == {"id": "b", "kind": "llm", "params": {"prompt": "Twice {numbers.output} is"},
                                     "after": ["numbers"]}
    ui.select("b")
    ui.run(ui.page.click("#f-id", {"clickCount": 3}))
    ui.run(ui.page.keyboard.type("numbers"))
    ui.click("#job-name")
    ui.wait("() => document.querySelector('.field-error:not(:empty)')", 5)
    assert "another step is called 'numbers'" in ui.js("() => document.querySelector('.field-error:not(:empty)').textContent")
    assert [s["id"] for s in ui.job()["steps"]] == ["numbers", "b"]


@pytest.mark.timeout(60)
def test_load_a_saved_file_and_save_it_again(ui, tmp_path):
    saved = {"name": "fan", "redundancy": 2, "quorum": "unanimous", "steps": [
        {"id": "x", "kind": "python", "params": {"code": "output = [3, 8, 12, 20]"}},
        {"id": "sum", "kind": "python", "params": {"code": "output = sum(inputs['x'])"}, "after": ["x"]},
        {"id": "n", "kind": "python", "params": {"code": "output = len(inputs['x'])"}, "after": ["x"]},
        {"id": "say", "kind": "llm", "params": {"prompt": "The mean is {sum.output} over {n.output}:",
                                                "max_tokens": 8, "stop": ["\n"]}, "after": ["sum", "n"]},
    ]}
    path = tmp_path / "fan.json"
    path.write_text(json.dumps(saved, indent=1))
    loader = ui.run(ui.page.querySelector("#load"))
    ui.run(loader.uploadFile(str(path)))
    ui.wait("() => document.querySelectorAll('.drawflow-node').length === 4", 10)
    assert ui.js("() => document.querySelectorAll('.connection').length") == 4
    assert "loaded fan.json" in ui.message()
    job = ui.job()
    assert steps_of(job) == steps_of(saved)
    assert job == saved
    assert ui.js("() => [document.querySelector('#redundancy').value, document.querySelector('#quorum').value]") \
        == ["2", "unanimous"]
    # laid out by depth: x before sum and n, which come before say
    xs = {s: ui.center(f".drawflow-node[data-step={s}]")[0] for s in ("x", "sum", "n", "say")}
    assert xs["x"] < xs["sum"] == xs["n"] < xs["say"]

    ui.click("#save")
    ui.wait("() => window.homemesh.savedBlob", 5)
    text = ui.js("async () => await window.homemesh.savedBlob.text()")
    assert json.loads(text) == saved
    assert ui.js("() => document.querySelector('#save-link').download") == "fan.json"
    download = tmp_path / "downloads" / "fan.json"  # and the browser downloaded the same file
    wait_for(lambda: download.exists() and download.read_text().endswith("\n"), 10, "the downloaded job file")
    assert json.loads(download.read_text()) == saved


@pytest.mark.timeout(60)
def test_a_cycle_or_a_missing_parameter_stops_the_run_before_anything_is_sent(ui, node):
    before = jobs_count(node)
    posts = len(SEEN["posts"])
    ui.drop_step("python", 60, 80)
    ui.drop_step("python", 380, 280)
    ui.select("a")
    ui.type_into("[data-param=code]", "output = 1")
    ui.select("b")
    ui.type_into("[data-param=code]", "output = 2")
    ui.connect("a", "b")
    ui.connect("b", "a")
    ui.click("#run")
    ui.wait("() => document.querySelector('#message').dataset.kind === 'error'", 5)
    assert "steps form a cycle: " in ui.message()
    assert "a → b → a" in ui.message() or "b → a → b" in ui.message()
    assert ui.js("() => document.querySelectorAll('.drawflow-node.invalid').length") == 2

    ui.click("#undo")  # drop the b → a link: the cycle is gone, now empty b's code
    ui.wait("() => document.querySelectorAll('.connection').length === 1", 5)
    ui.select("b")
    ui.run(ui.page.click("[data-param=code]", {"clickCount": 3}))
    ui.run(ui.page.keyboard.press("Backspace"))
    ui.click("#job-name")
    assert "code" not in ui.job()["steps"][1]["params"]
    ui.click("#run")
    ui.wait("() => document.querySelector('#message').textContent.includes('needs')", 5)
    assert ui.message() == "step 'b' (python) needs code"
    assert ui.js("() => [...document.querySelectorAll('.drawflow-node.invalid')].map(b => b.dataset.step)") == ["b"]

    ui.drop_step("llm", 60, 380)  # a missing LLM prompt names the kind and the parameter
    ui.select("b")
    ui.type_into("[data-param=code]", "output = 2")
    ui.click("#run")
    ui.wait("() => document.querySelector('#message').textContent.includes('prompt')", 5)
    assert ui.message() == "step 'c' (llm) needs prompt"
    assert jobs_count(node) == before and len(SEEN["posts"]) == posts
    assert ui.js("() => window.homemesh.lastRun") is None


@pytest.mark.timeout(150)
def test_a_step_whose_code_raises_shows_as_failed(ui):
    """A python step that raises on every worker: its box reads failed (badge and state), with each replica
    marked ✗ and the code's error in the message, never a running box with failed replicas."""
    ui.drop_step("python", 60, 80)
    ui.select("a")
    ui.type_into("[data-param=code]", "raise ValueError('boom')")
    ui.click("#job-name")
    # the box's state, badge and replica marks each time the page changes, from the run's start
    ui.js("""() => { window.__states = []; new MutationObserver(() => { const b = document.querySelector(
        '.drawflow-node[data-step=a]'); window.__states.push(b.dataset.state + ' ' +
        b.querySelector('.badge').textContent + ' ' + b.querySelector('.box-replicas').textContent); })
        .observe(document.querySelector('#canvas'), {subtree: true, childList: true, attributes: true}); }""")
    ui.click("#run")
    ui.wait("() => window.homemesh.lastRun", 120)
    ui.wait("() => document.querySelector('.drawflow-node[data-step=a]').dataset.state !== 'running'", 5)
    seen = ui.js("() => window.__states")
    box = ui.js("""() => { const b = document.querySelector('.drawflow-node[data-step=a]');
        return {state: b.dataset.state, badge: b.querySelector('.badge').textContent,
                reps: [...b.querySelectorAll('.rep')].map(r => r.textContent)}; }""")
    assert ui.js("() => window.homemesh.lastRun.status") == "failed"
    assert box["state"] == "failed" and box["badge"] == "failed", (box, seen)
    assert box["reps"] and all(r.endswith("✗") for r in box["reps"]), box
    assert "ValueError" in ui.message() and "boom" in ui.message()
    assert not [s for s in seen if s.startswith("running") and "✗" in s and "…" not in s and "•" not in s], seen


@pytest.mark.timeout(60)
def test_a_validation_banner_clears_once_the_step_is_fixed(ui, node):
    """Run with a required parameter missing: the banner says so and the box is marked; filling the
    parameter in clears both at once, before any new run."""
    ui.drop_step("python", 60, 80)
    ui.click("#run")
    ui.wait("() => document.querySelector('#message').dataset.kind === 'error'", 5)
    assert ui.message() == "step 'a' (python) needs code"
    assert ui.js("() => document.querySelectorAll('.drawflow-node.invalid').length") == 1
    ui.select("a")
    ui.type_into("[data-param=code]", "output = 1")
    ui.wait("() => !document.querySelector('#message').textContent", 5)
    assert ui.js("() => document.querySelectorAll('.drawflow-node.invalid').length") == 0


@pytest.mark.timeout(150)
def test_plan_from_a_question_lays_the_dag_out(ui):
    ui.type_into("#plan-query", "What is the average of 3, 8, 12 and 20?")
    ui.click("#plan")
    ui.wait("() => document.querySelector('#message').textContent.includes('planner')", 120)
    assert ui.js("() => document.querySelector('#message').dataset.kind") == "info", ui.message()
    boxes = ui.js("() => [...document.querySelectorAll('.drawflow-node')].map(b => {"
                  "const r = b.getBoundingClientRect(); return [b.dataset.step, r.left, r.top, r.right, r.bottom]})")
    assert boxes
    for i, (_, l1, t1, r1, b1) in enumerate(boxes):
        for _, l2, t2, r2, b2 in boxes[i + 1:]:
            assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, boxes  # no two boxes overlap
    job = ui.job()
    assert [s["id"] for s in job["steps"]] == [b[0] for b in boxes]
    assert ui.js("() => window.homemesh.problem()") is None  # the plan is ready to run


@pytest.mark.timeout(60)
def test_a_job_file_naming_a_kind_every_object_inherits_is_an_unknown_kind(ui, tmp_path):
    """Found by this project's red team (2026-12-06): the editor looked a kind up as `kinds[name]`, and a job
    file with kind `__proto__` or `constructor` found what every JavaScript object inherits: TypeErrors in
    the box's preview and form, and a broken box."""
    for kind in ("__proto__", "constructor"):
        before = len(SEEN["errors"])
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps({"steps": [{"id": "a", "kind": kind, "params": {}}]}))
        loader = ui.run(ui.page.querySelector("#load"))
        ui.run(loader.uploadFile(str(path)))
        ui.wait("k => document.querySelector('#message').textContent.includes(k + '.json')", 10, kind)
        assert ui.message() == f"{kind}.json: step 'a' has unknown kind '{kind}'"
        assert SEEN["errors"][before:] == [], SEEN["errors"][before:]


def test_no_console_errors_and_no_requests_to_other_hosts(ui):
    ui.click(".palette-item[data-kind=scrape]")
    ui.select("a")
    ui.type_into("[data-param=selectors]", "{not json")
    ui.wait("() => document.querySelector('.field-error:not(:empty)')", 5)
    assert "not valid JSON" in ui.js("() => document.querySelector('.field-error:not(:empty)').textContent")
    assert SEEN["urls"], "no requests were recorded"
    hosts = {urlparse(u).hostname for u in SEEN["urls"] if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, hosts
    assert not SEEN["errors"], SEEN["errors"]
