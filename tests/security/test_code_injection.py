"""An earlier step's output is whatever a stranger made it (a scraped page, a cheating worker's text).
Pasted into a later python step's source it would be code; so python code is never templated: a job
that tries is refused before anything runs, and a hostile output reaches the next step as data only.
Against a real 4-node mesh (node0 submits)."""

from __future__ import annotations

import pytest

from mesh.errors import UserError

from .hostile import submit, wait_job

pytestmark = pytest.mark.mesh

# what a page could hold: close the string, run something, reopen the string
HOSTILE = "'); import os; os.kill(os.getppid(), 9); output = ('pwned"


@pytest.mark.timeout(60)
def test_a_placeholder_in_python_code_is_refused_before_anything_runs(mesh4):
    job = {"name": "inject", "steps": [
        {"id": "page", "kind": "python", "params": {"code": f"output = {HOSTILE!r}"}},
        {"id": "use", "kind": "python", "params": {"code": "output = len('{page.output}')"}}]}
    with pytest.raises(UserError) as info:
        submit(mesh4.nodes[0], job, 3)
    assert "python code cannot contain {page.output}" in str(info.value)
    assert all(j["name"] != "inject" for j in mesh4.nodes[0].client.request("GET", "/jobs", shape=list))


@pytest.mark.timeout(90)
def test_a_hostile_output_reaches_the_next_python_step_as_data(mesh4):
    job = {"name": "data-only", "steps": [
        {"id": "page", "kind": "python", "params": {"code": f"output = {HOSTILE!r}"}},
        {"id": "use", "kind": "python", "after": ["page"],
         "params": {"code": "output = [len(inputs['page']), inputs['page'][:3]]"}}]}
    rep = wait_job(mesh4.nodes[0], submit(mesh4.nodes[0], job, 3), timeout=60)
    assert rep["status"] == "done", str(rep["steps"])
    assert rep["steps"]["use"]["output"] == [len(HOSTILE), HOSTILE[:3]]
    assert sum(r["agreed"] for r in rep["steps"]["use"]["replicas"]) == 3
