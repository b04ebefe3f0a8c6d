"""A job's events, in the order they happened, for GET /jobs/{id}/events (server-sent events) and the
OpenAI-compatible stream. The submitter publishes what changed in its JobRun after each turn of the
job's loop; readers replay from any index and then wait for more."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from mesh.core.jobrun import JobRun

MAX_EVENTS = 20_000  # per job: a runaway stream of progress cannot eat the node's memory


@dataclass(frozen=True)
class Event:
    kind: str  # job | step | replica | progress | done
    data: dict

    def sse(self, index: int) -> bytes:
        return f"id: {index}\nevent: {self.kind}\ndata: {json.dumps(self.data)}\n\n".encode()


@dataclass
class EventLog:
    items: list[Event] = field(default_factory=list)
    closed: bool = False  # the `done` event is out: nothing follows
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _steps: dict[str, str] = field(default_factory=dict)  # step → last published status
    _replicas: dict[tuple[str, str], str] = field(default_factory=dict)  # (step, node) → last state

    def publish(self, kind: str, data: dict) -> None:
        if self.closed or (len(self.items) >= MAX_EVENTS and kind == "progress"):
            return
        if kind == "done":  # streamed text is in the outputs now: keep each progress event's place, not its text
            self.items = [Event(e.kind, {k: v for k, v in e.data.items() if k != "text"}) if e.kind == "progress"
                          else e for e in self.items]
        self.items.append(Event(kind, data))
        self.closed = kind == "done"
        self._changed.set()
        self._changed = asyncio.Event()  # wakes every current reader once; later readers wait anew

    async def wait_past(self, index: int, timeout: float) -> None:
        """Return once there is an event at `index` or beyond, the log is closed, or `timeout` passed."""
        if len(self.items) > index or self.closed:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def diff(self, run: JobRun) -> None:
        """Publish every step status and replica state that changed since the last call: a step that
        starts before its replicas, a step that ends after them."""
        for sid, step in run.steps.items():
            changed = self._steps.get(sid) != step.status
            self._steps[sid] = step.status
            final = step.status in ("done", "failed", "skipped")
            if changed and not final:
                self.publish("step", {"step": sid, "status": step.status})
            for node, rep in step.replicas.items():
                state = "failed" if rep.error else ("answered" if rep.digest else "running")
                if self._replicas.get((sid, node)) != state:
                    self._replicas[(sid, node)] = state
                    data = {"step": sid, "node": node, "state": state, "role": rep.role}
                    if rep.digest:
                        data["digest"] = rep.digest
                    if rep.error:
                        data["error"] = rep.error
                    self.publish("replica", data)
            if changed and final:
                data = {"step": sid, "status": step.status, "digest": step.digest, "output": step.output,
                        "credit": step.credit,
                        "agreed": [n for n, r in step.replicas.items() if step.key and r.key == step.key]}
                if step.error:
                    data["error"] = step.error
                self.publish("step", data)
