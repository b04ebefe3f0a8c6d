"""GET /metrics: the node in Prometheus' text format. One CollectorRegistry per API (never the global
default one: two nodes in one process must not share metrics), holding one collector that reads the
node's own counters at scrape time (its status and its tally, through the NodeFacade) rather than
keeping a second copy of them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from mesh.http.facade import NodeFacade

CONTENT_TYPE = CONTENT_TYPE_LATEST


class NodeCollector:
    """Every homemesh_* family, built anew from the node's state at each scrape."""

    def __init__(self, node: NodeFacade):
        self.node = node

    def collect(self) -> Iterator[Metric]:
        st, m = self.node.status(), self.node.metrics()
        yield from _node(st)
        yield from _jobs(self.node, m)
        yield from _work(m)
        yield from _peers(st)
        yield from _credits(st, m)


def registry_for(node: NodeFacade) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _counter(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for values, n in rows:
        fam.add_metric(values, n)
    return fam


def _gauge(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=labels)
    for values, n in rows:
        fam.add_metric(values, n)
    return fam


def _histogram(fam: HistogramMetricFamily, labels: list[str], h: dict[str, Any]) -> None:
    fam.add_metric(labels, [(str(b), float(n)) for b, n in h["buckets"]], float(h["sum"]))


def _node(st: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("homemesh_node_info", "This node: its id, transport and reachability (always 1)",
                 ["node", "transport", "reachability"],
                 [([st["node"], str(st.get("transport", "")), str(st.get("reachability", ""))], 1)])
    yield _counter("homemesh_rejected", "Envelopes and messages refused, by reason, since the node started",
                   ["reason"], [([r], n) for r, n in sorted(st.get("rejected", {}).items())])
    yield _counter("homemesh_dials_refused", "Dials the node's gate refused, by reason", ["reason"],
                   [([r], n) for r, n in sorted(st.get("dials_refused", {}).items())])
    yield _counter("homemesh_relayed_bytes", "Bytes this node forwarded for others as a relay (libp2p circuits)",
                   [], [([], float(st.get("relayed_bytes", 0)))])
    yield _gauge("homemesh_paused", "1 while the owner has paused this node (mesh pause): no new steps", [],
                 [([], 1 if st.get("paused") else 0)])
    yield _gauge("homemesh_owner_limit", "The owner's limits in force (0: none): cpu as a share of the CPUs, "
                 "memory in bytes for all python steps, steps at once", ["limit"],
                 [([k], float(st.get(f"max_{k}") or 0)) for k in ("cpu", "memory", "steps")])
    yield _gauge("homemesh_ledger_error", "1 while the ledger refuses writes (no paid work until a restart)", [],
                 [([], 1 if st.get("ledger_error") else 0)])
    yield _gauge("homemesh_key_in_use_elsewhere", "Records of this node's key signed by another process (a copied "
                 "home or a stolen key): 0 when none was seen", [],
                 [([], float((st.get("key_in_use_elsewhere") or {}).get("records_seen", 0)))])


def _jobs(node: NodeFacade, m: dict[str, Any]) -> Iterator[Metric]:
    held = Counter(view.status for view in node.jobs().values())
    yield _gauge("homemesh_jobs", "Jobs submitted here and held in memory, by status", ["status"],
                 [([s], held[s]) for s in ("running", "done", "failed")])
    ended = m.get("jobs_ended", {})
    yield _counter("homemesh_jobs_ended", "Jobs submitted here that ended since the node started, by status",
                   ["status"], [([s], ended.get(s, 0)) for s in ("done", "failed")])
    yield _counter("homemesh_steps_ended", "Steps of those jobs, by kind and status", ["kind", "status"],
                   [([k, s], n) for k, s, n in m.get("steps", [])])
    yield _counter("homemesh_replicas", "Replicas of those steps by outcome: agreed with the accepted answer, "
                   "disagreed, failed, or unanswered when the step ended", ["kind", "outcome"],
                   [([k, o], n) for k, o, n in m.get("replicas", [])])
    fam = HistogramMetricFamily("homemesh_job_duration_seconds", "Wall time from a job's submission to its end")
    if "job_seconds" in m:
        _histogram(fam, [], m["job_seconds"])
    yield fam


def _work(m: dict[str, Any]) -> Iterator[Metric]:
    yield _counter("homemesh_worker_steps", "Steps peers asked this node to run, by kind and outcome "
                   "(ok, failed, refused)", ["kind", "outcome"], [([k, o], n) for k, o, n in m.get("worked", [])])
    fam = HistogramMetricFamily("homemesh_worker_step_duration_seconds",
                                "Wall time of the steps this node ran for peers, by kind", labels=["kind"])
    for kind, h in m.get("step_seconds", {}).items():
        _histogram(fam, [kind], h)
    yield fam


def _peers(st: dict[str, Any]) -> Iterator[Metric]:
    by = Counter((p.get("state", ""), p.get("connection") or "none") for p in st.get("peers", []))
    yield _gauge("homemesh_peers", "Peers in the table, by state (up, down, new, left) and connection kind "
                 "(direct, relayed, hole-punched; none when unlinked)", ["state", "connection"],
                 [([s, c], n) for (s, c), n in sorted(by.items())])
    w = st.get("worker") or {}
    yield _gauge("homemesh_worker_slots_in_use", "Step slots held by requesters, by kind of holder", ["holder"],
                 [([h], w.get(h, 0)) for h in ("known", "stranger")])
    yield _gauge("homemesh_worker_slots", "Step slots this node offers in all", [], [([], w.get("total", 0))])


def _credits(st: dict[str, Any], m: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("homemesh_credit_balance", "Credits earned minus spent, from this node's ledger", [],
                 [([], float(st.get("balance", 0.0)))])
    yield _counter("homemesh_credits_earned", "Credits earned from peers (work done for them), from the ledger", [],
                   [([], float(m.get("credits_earned", 0.0)))])
    yield _counter("homemesh_credits_paid", "Credits paid to peers (work they did here), from the ledger", [],
                   [([], float(m.get("credits_paid", 0.0)))])
