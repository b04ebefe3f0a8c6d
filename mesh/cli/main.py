"""The `mesh` command line. Every user mistake ends as one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mesh import PROTOCOL_VERSION, __version__
from mesh.cli.terminal import os_problem, printable
from mesh.core.jobid import short
from mesh.errors import ConfigError, Interrupted, JobError, LedgerError, MeshError, NodeUnreachable, UserError
from mesh.node.home import default_home, parse_hostport
from mesh.wire.records import MAX_FETCH_MODELS

if TYPE_CHECKING:  # (imported where used: the CLI starts without cryptography)
    from mesh.wire.identity import Identity

EXIT_USER, EXIT_FAILED = 2, 3
MAX_COUNT = 10**9  # the most a --limit may ask for
EXIT_PIPE = 141  # 128 + SIGPIPE, as a shell reports a program its reader left
UP_CREDIT_LINE = 1000.0  # `mesh up` nodes' --credit-line: chosen from measured job costs (README, "What a job costs")
EXAMPLE_JOB = Path(__file__).resolve().parents[2] / "examples" / "demo-job.json"
PYTHON_JOB = EXAMPLE_JOB.with_name("python-job.json")  # what nodes started --no-model can run (no llm step)


def _home(args: argparse.Namespace) -> Path:
    return _expand(args.home) if args.home else default_home()


def _expand(path: str) -> Path:
    """A path the user gave, `~` and `~user` expanded: one line for a user this machine has no home for
    (Path.expanduser raised RuntimeError out of every command taking --home, --dir or --model)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise UserError(f"{path}: no home directory is known for {path.split('/')[0]!r}") from None


def _emit(args: argparse.Namespace, obj: object, human: str) -> None:
    """--json: the object (JSON escapes every control character); else the text, made printable."""
    print(json.dumps(obj, indent=None if args.json else 2) if args.json else printable(human))


def cmd_init(args: argparse.Namespace) -> int:
    from mesh.node.home import ensure_token
    from mesh.wire.identity import load_or_create

    home = _home(args)
    ident, created = load_or_create(home)
    ensure_token(home)
    print(ident.node_id)
    if not created:
        print(f"(existing key in {home / 'node.key'})", file=sys.stderr)
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from mesh.node.lifecycle import NodeOptions, run_node

    opts = NodeOptions(
        home=_home(args), listen=parse_hostport(args.listen, "--listen"), api=parse_hostport(args.api, "--api"),
        bootstrap=[_bootstrap(b, args.transport) for b in args.bootstrap], network=args.network,
        fault=args.fault or "", allow_unsandboxed_python=args.allow_unsandboxed_python,
        load_model=not args.no_model, threads=args.threads, max_cpu=args.max_cpu,
        max_memory=args.max_memory, max_steps=args.max_steps, hours=args.hours, when_idle=args.when_idle,
        model=_expand(args.model) if args.model else None, frame_cap=args.frame_cap,
        credit_line=args.credit_line, collude=args.collude or "", spot_rate=args.spot_rate,
        blacklist_s=args.blacklist, core_log=args.core_log, scrape_allow=args.scrape_allow,
        browser=args.browser or "", no_scrape=args.no_scrape, share_models=not args.no_model_sharing,
        fetch_models=min(parse_size(args.fetch_models), MAX_FETCH_MODELS) if args.fetch_models else 0,
        keep_jobs=args.keep_jobs, transport=args.transport,
        relay=not args.no_relay, max_links=args.max_links, rates=_rates(args.rate, "--rate"),
        max_rates=_rates(args.max_rate, "--max-rate", maximum=True), require_credit=args.require_credit,
        relay_budget=parse_size(args.relay_budget), testimony_s=args.testimony_every, down_after_s=args.down_after,
        fault_after=args.fault_after,
        advertise=f"{parse_hostport(args.advertise, '--advertise')[0]}:{parse_hostport(args.advertise, '--advertise')[1]}"
        if args.advertise else "",
    )
    run_node(opts)
    return 0


def _owner_flag(parse):
    """An argparse type from one of mesh.node.owner's parsers (its ValueError: argparse's one-line error)."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _rates(items: list[str], flag: str, maximum: bool = False) -> RateCard:  # noqa: F821 - imported where used
    """`--rate` / `--max-rate KEY=CREDITS` (repeatable) over the default card (or the default limits)."""
    from mesh.core.pricing import MAX_DEFAULT
    from mesh.wire.messages import RateCard
    from mesh.wire.records import DEFAULT_RATES, card_problem

    names = [f.name for f in dataclasses.fields(RateCard)]
    card = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"{flag} {item}: expected KEY=CREDITS with KEY one of {', '.join(names)}")
        try:
            card[key] = float(value)
        except ValueError:
            raise ConfigError(f"{flag} {item}: {value!r} is not a number") from None
    rates = dataclasses.replace(MAX_DEFAULT if maximum else DEFAULT_RATES, **card)
    problem = card_problem(rates)
    if problem:
        raise ConfigError(f"{flag}: {problem}")
    return rates


def _bootstrap(text: str, transport: str) -> str:
    """`--bootstrap`: HOST:PORT, or (libp2p) a multiaddr such as /ip4/H/tcp/P/p2p/ID."""
    if transport == "tcp" or not text.startswith("/"):
        host, port = parse_hostport(text, "--bootstrap")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    from mesh.node.p2p.addresses import parse

    try:
        return str(parse(text).addr)
    except ValueError as exc:
        raise ConfigError(f"--bootstrap: {exc}") from None


def _client(args: argparse.Namespace):
    from mesh.cli.client import Client

    return Client.locate(_home(args) if (args.home or not args.api) else None, args.api)


def cmd_status(args: argparse.Namespace) -> int:
    st = _client(args).request("GET", "/status")
    lines = [f"node {st['node']}  peer port {st['listen']}  runs: {', '.join(st['kinds']) or 'nothing'}",
             f"{len(st['peers'])} peers:"]
    for p in st["peers"]:
        seen = f"{time.time() - p['last_seen']:.0f}s ago" if p["last_seen"] else "never"
        lines.append(f"  {p['node'][:16]}  {p['address']:<21} {p['state']:<5} seen {seen:<9} "
                     f"rep {p['reputation']:.2f} (with testimony {p['standing']:.2f})  {','.join(p['kinds'])}")
    lines.append(f"balance {st['balance']:g} credits (credit line {st['credit_line']:g})"
                 + (f"  LEDGER ERROR: {st['ledger_error']}" if st.get("ledger_error") else ""))
    w = st.get("worker")
    if w:
        lines.append(f"step slots: {w['known']} known + {w['stranger']} stranger of {w['total']} in use "
                     f"(strangers at most {w['stranger_max']})")
    if "max_steps" in st:
        cpu = f"{st['max_cpu']:.0%}" if st["max_cpu"] else "no cap"
        mem = f"{st['max_memory'] / (1 << 20):.0f} MiB" if st["max_memory"] else "no cap"
        lines.append(f"owner's limits: cpu {cpu}, memory {mem}, {st['max_steps']} steps at once"
                     + (f", only {st['hours']}" if st.get("hours") else "")
                     + (f", after {st['when_idle']:g} min idle" if st.get("when_idle") else "")
                     + (f"  PAUSED: {st['paused']}" if st.get("paused") else ""))
    twin = st.get("key_in_use_elsewhere")
    if twin:
        lines.append(f"KEY IN USE ELSEWHERE: another node signs with this node's key, at {', '.join(twin['addresses'])} "
                     "(a copied home? run the copy on a home of its own: mesh init --home DIR)")
    rej = st["rejected"]
    lines.append("rejected envelopes: " + (", ".join(f"{k}={v}" for k, v in sorted(rej.items())) or "none"))
    _emit(args, st, "\n".join(lines))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from mesh.cli import doctor

    home = _home(args)
    checks = doctor.run_checks(home, args.browser or "")
    rep = doctor.report(home, checks)
    _emit(args, rep, doctor.human(checks))
    return 0 if rep["ok"] else 1


def _load_job_file(path: str) -> dict:
    from mesh.core.dag import load_job_text
    from mesh.http.middleware import MAX_BODY
    from mesh.steps.extract import check_selectors
    from mesh.steps.grammar import check_grammars
    from mesh.userfiles import read_text

    # at most what the node takes: a bigger one was refused mid-send, and reported as "cannot reach the node"
    text = read_text(path, "job file", MAX_BODY - (64 << 10), JobError)
    # validate locally: same checks as the node, clearer errors, nothing sent
    job = load_job_text(text, path)
    check_grammars(job, path)
    check_selectors(job, path)
    return json.loads(text)


def _describe(report: dict) -> str:
    lines = [f"job {short(report['job_id'])} ({report.get('name', '')}): {report['status']}"]
    for sid, s in report["steps"].items():
        agreed = sum(r["agreed"] for r in s["replicas"])
        out = s["output"] if isinstance(s["output"], str) else json.dumps(s["output"])
        out = _printable(out or "", 200)
        paid = [r["credit"] for r in s["replicas"] if "credit" in r]  # each at its own rate card
        credit = (f"credit {min(paid):g} to {max(paid):g}" if paid and min(paid) != max(paid)
                  else f"credit {s.get('credit', 0):g} each")
        lines.append(f"  {sid:<12} {s['status']:<8} {agreed}/{len(s['replicas'])} replicas agreed  {credit}")
        if s["status"] == "done":
            lines.append(f"      output: {out}")
        if s.get("error"):
            lines.append(f"      error: {_printable(s['error'], 2000)}")
    if "credits_spent" in report:
        lines.append(f"  credits spent: {report['credits_spent']:g}")
    if report.get("payment_error"):
        lines.append(f"  PAYMENT ERROR: {report['payment_error']}")
    return "\n".join(lines)


def _wait(client, job_id: str, timeout: float) -> dict:
    """Follow a job's event stream to its end, showing each step and replica on stderr as it happens.
    Ctrl-C stops the waiting, not the job: Interrupted says how to get back to it."""
    deadline = time.monotonic() + timeout
    sid = short(job_id)
    tokens: dict[tuple[str, str], int] = {}
    try:
        # each read waits at most past the deadline (a quiet job held `--timeout 3` 47 s: the deadline was looked
        # at only when an event came), and the node's keep-alives come through to look at it every 15 s
        for kind, ev in client.events(job_id, min(60.0, timeout + 1.0), keepalive=True):
            if not kind:
                if time.monotonic() > deadline:
                    break
                continue
            if kind == "done":
                return ev
            if kind == "job" and isinstance(ev.get("job_id"), str):
                sid = short(ev["job_id"])  # (the id given may be a prefix)
            line = _event_line(kind, ev, tokens)
            if line:
                print(f"[{sid}] {_printable(line, 400)}", file=sys.stderr, flush=True)
            if time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        print(file=sys.stderr)  # past the ^C the terminal echoed
        raise Interrupted(f"job {sid} continues on the mesh; `mesh job {sid} --wait` follows it again, "
                          f"`mesh cancel {sid}` stops it") from None
    except NodeUnreachable:
        if time.monotonic() <= deadline:  # (a read that waited past the deadline: the job is still running)
            raise
    raise MeshError(f"job {sid} still running after {timeout:g} s; see `mesh job {sid}`")


def _event_line(kind: str, ev: dict, tokens: dict[tuple[str, str], int]) -> str:
    """One progress line for a job event, '' for none. `tokens`: the longest text shown so far per
    (step, node), so a progress event that is not ahead of it is not shown again."""
    if kind == "step" and ev["status"] != "waiting":
        if ev["status"] not in ("done", "failed"):
            return f"{ev['step']}: {ev['status']}"
        out = ev["output"] if isinstance(ev.get("output"), str) else json.dumps(ev.get("output"))
        detail = (f"{len(ev.get('agreed', []))} agreed → {(out or '').replace(chr(10), ' ')[:80]}"
                  if ev["status"] == "done" else ev.get("error", ""))
        return f"{ev['step']}: {ev['status']}  {detail}"
    if kind == "replica":
        what = {"running": "asked", "answered": f"answered {ev.get('digest', '')[:12]}",
                "failed": f"failed: {ev.get('error', '')[:80]}"}[ev["state"]]
        return f"{ev['step']}: replica {ev['node'][:8]} {what}"
    if kind == "progress":
        key = (ev["step"], ev["node"])
        if ev["tokens"] > tokens.get(key, 0):
            tokens[key] = ev["tokens"]
            tail = ev.get("text", "")[-60:].replace("\n", " ")
            return f"{ev['step']}: {ev['node'][:8]} {ev['tokens']} tokens …{tail}"
    return ""


def cmd_submit(args: argparse.Namespace) -> int:
    job = _load_job_file(args.job)
    body: dict = {"job": job}
    if args.redundancy is not None:
        body["redundancy"] = args.redundancy
    if args.quorum is not None:
        body["quorum"] = args.quorum
    from mesh.cli import cost
    from mesh.core.dag import parse_job

    parsed = parse_job(job, args.job, args.redundancy, args.quorum)
    client = _client(args)
    est = cost.job_estimate(client.request("GET", "/status"), parsed)
    cost.check_max_cost(est, args.max_cost)  # its one-line refusal says the estimate
    job_id = client.request("POST", "/jobs", body)["job_id"]
    # once the node took the job (a refusal stays one line), before any step is paid: steps are paid as they settle
    print(f"estimated cost: at most {cost.show(est.total)} credits", file=sys.stderr, flush=True)
    if not args.wait:
        _emit(args, {"job_id": job_id, "estimated_cost": est.total}, short(job_id))  # any unique prefix names it
        return 0
    report = _wait(client, job_id, args.timeout)
    _emit(args, {**report, "estimated_cost": est.total}, _describe(report))
    return 0 if report["status"] == "done" else EXIT_FAILED


def cmd_ask(args: argparse.Namespace) -> int:
    from mesh.planning.planner import check_query

    query = check_query(" ".join(args.query))
    if not 0 < args.plan_timeout <= MAX_PLAN_S:
        raise UserError(f"--plan-timeout must be more than 0 and at most {MAX_PLAN_S} seconds, not {args.plan_timeout:g}")
    client = _client(args)
    body: dict = {"query": query, "planner": args.planner, "timeout": args.plan_timeout}
    if args.redundancy is not None:
        body["redundancy"] = args.redundancy
    reply = _plan(client, body)
    out = sys.stderr if args.json else sys.stdout
    print(reply["tree"], file=out, flush=True)
    if args.save:
        _write(args.save, json.dumps(reply["plan"], indent=2) + "\n")
        print(f"plan saved to {args.save} (run it with: mesh submit {args.save} --wait)", file=out)
    out = {"plan": reply["plan"], "planner": reply["planner"], "fallback": reply["fallback"], "result": None}
    if args.plan_only or not (args.yes or _confirm("run this plan on the mesh? [y/N] ")):
        if not args.plan_only:
            print("not run (--yes runs without asking)", file=sys.stderr)
        if args.json:
            _emit(args, out, "")
        return 0
    job_id = client.request("POST", "/jobs", {"job": reply["plan"]})["job_id"]
    report = out["result"] = _wait(client, job_id, args.timeout)
    _emit(args, out, _describe(report))
    return 0 if report["status"] == "done" else EXIT_FAILED


MAX_PLAN_S, PLAN_TICK_S = 600, 5.0


def _plan(client, body: dict) -> dict:
    """POST /plan, saying on stderr who plans and, every few seconds, how long it has been: the model may
    take up to --plan-timeout, and a silent terminal looked hung."""
    who = (f"the model, at most {body['timeout']:g} s, else the rules" if body["planner"] == "model"
           else "the rules")
    print(f"planning… ({who})", file=sys.stderr, flush=True)
    t0, done = time.monotonic(), threading.Event()

    def tick() -> None:
        while not done.wait(PLAN_TICK_S):
            print(f"planning… {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    threading.Thread(target=tick, name="plan-progress", daemon=True).start()
    try:  # (the node answers within the cap; the margin is for reading the instruct model's template)
        reply = client.request("POST", "/plan", body, timeout=body["timeout"] + 60)
    finally:
        done.set()
    print(f"planned in {time.monotonic() - t0:.2f} s", file=sys.stderr, flush=True)
    return reply


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


def _confirm(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:
        print(file=sys.stderr)
        return False


def cmd_job(args: argparse.Namespace) -> int:
    path = f"/jobs/{_id_path(args.job_id)}"  # (a prefix: the node says which job)
    client = _client(args)
    report = client.request("GET", path)
    if args.wait and report["status"] == "running":
        report = _wait(client, report["job_id"], args.timeout)
    _emit(args, report, _describe(report))
    return 0 if report["status"] != "failed" else EXIT_FAILED


def cmd_jobs(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise UserError("--limit must be from 1 to 1000")
    jobs = _client(args).request("GET", f"/jobs?limit={args.limit}", shape=list)
    lines = [f"{'JOB':<8}  {'STATUS':<8} {'SUBMITTED':<19}  {'STEPS':>5}  {'CREDITS':>8}  NAME"]
    lines += [f"{short(j['job_id']):<8}  {j['status']:<8} "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(j['created']))}  {j['steps']:>5}  "
              f"{j['credits_spent']:>8.3f}  {_printable(j['name'])}" for j in jobs]
    _emit(args, jobs, "\n".join(lines) if jobs else "no jobs submitted from this node yet")
    return 0


def _id_path(job_id: str) -> str:
    """A job id (or prefix) as a URL path segment: the node checks it, this only keeps it one segment."""
    from urllib.parse import quote

    if not job_id.strip():  # (`/jobs/` is the list of jobs: `mesh job ''` read it as one and raised TypeError)
        raise UserError("a job id is needed (or its first characters): `mesh jobs` lists them")
    return quote(job_id.strip(), safe="")


def _printable(text: object, limit: int = 60) -> str:
    """One field of text for a terminal, at most `limit` characters, its control characters escaped
    (mesh.cli.terminal) and its newlines shown as \\n, so it stays on its line."""
    return printable(str(text)[:limit]).replace("\n", "\\n")


def cmd_pause(args: argparse.Namespace) -> int:
    st = _client(args).request("POST", "/pause", {"reason": args.reason} if args.reason else None, timeout=30)
    _emit(args, st, f"paused ({st['paused']}): steps running here finish, no new ones start, and peers were told "
                    "to place elsewhere (no reputation lost); `mesh resume` to take steps again")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    st = _client(args).request("POST", "/resume", timeout=30)
    _emit(args, st, f"still paused: {st['paused']}" if st.get("paused") else "resumed: taking steps from peers again")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    path = f"/jobs/{_id_path(args.job_id)}/cancel"
    report = _client(args).request("POST", path, timeout=30)
    _emit(args, report, _describe(report))
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from ledger.store import Ledger
    from mesh.node.home import LEDGER_FILE
    from mesh.wire.identity import load

    if args.challenge is not None and args.what not in ("export", "verify-receipts"):
        raise UserError("--challenge is for `mesh ledger export` and `mesh ledger verify-receipts`")
    if args.what == "verify-receipts":
        return _verify_receipts(args)
    if args.what in ("explain", "export") and not args.arg:
        raise UserError(f"mesh ledger {args.what} needs {'an ENTRY id' if args.what == 'explain' else 'a FILE'}")
    home = _home(args)
    ident = load(home)  # (read once: export signs with it, verify checks the heads with its key)
    led = Ledger(home / LEDGER_FILE, readonly=True)
    try:
        return _LEDGER_VIEWS[args.what](args, led, ident)
    except sqlite3.DatabaseError as exc:  # a damaged file, read only: one line, not a traceback
        raise LedgerError(f"ledger {home / LEDGER_FILE} cannot be read: {exc} (`mesh ledger verify` says more)") from None
    finally:
        led.close()


def _ledger_explain(args: argparse.Namespace, led, ident: Identity) -> int:
    from ledger.views import explained
    from mesh.node.home import LEDGER_FILE

    if not (args.arg.isascii() and args.arg.isdigit()):  # ('²' is a digit to str.isdigit, not to int())
        raise UserError(f"ENTRY is an entry number (see `mesh ledger history`), got {args.arg!r}")
    entry = explained(led, int(args.arg), ident.node_id) if len(args.arg) < 19 else None  # (SQLite's integers are 64-bit)
    if entry is None:
        raise UserError(f"no entry {args.arg} in {_home(args) / LEDGER_FILE}")
    _emit(args, entry, entry["explanation"])
    return 0


def _ledger_export(args: argparse.Namespace, led, ident: Identity) -> int:
    from ledger.export import check_challenge, export_receipts, judge_with, sign_export

    challenge = "" if args.challenge is None else check_challenge(args.challenge)
    me = ident.node_id
    data = export_receipts(led.history(None), me, judge_with(led, me, _record_keys(_home(args))))
    data = sign_export(data, ident, challenge, int(time.time() * 1000))
    _write(args.arg, json.dumps(data, indent=1) + "\n")
    _emit(args, {"file": args.arg, "receipts": len(data["receipts"]), "total": data["total"],
                 "total_all": data["total_all"], "challenge": challenge},
          f"wrote {len(data['receipts'])} receipts to {args.arg}: {data['total']:g} credits from payers this "
          f"node trusts, of {data['total_all']:g} in all; signed with this node's key"
          + (f" for the challenge {challenge!r}" if challenge else " (no challenge: --challenge answers a checker's)"))
    return 0


def _record_keys(home: Path) -> list[str]:
    """The keys of the signed peer records a node holds (peers.json): peers it has met."""
    from mesh.node.home import read_peers

    keys = [r.get("key") for r in read_peers(home) if isinstance(r, dict)]
    return [k for k in keys if isinstance(k, str) and len(k) == 64 and all(c in "0123456789abcdef" for c in k)]


def _ledger_balance(args: argparse.Namespace, led, ident: Identity) -> int:
    from ledger import views

    obj = views.balance(led, ident.node_id)
    _emit(args, obj, f"node {ident.node_id}\nbalance {obj['balance']:g} (earned {obj['earned']:g}, "
                     f"spent {obj['spent']:g})")
    return 0


def _ledger_peers(args: argparse.Namespace, led, ident: Identity) -> int:
    from ledger import views

    rows = views.peers(led, int(time.time() * 1000))
    human = "\n".join(f"{r['node'][:16]}  reputation {r['reputation']:.3f}  agreed {r['agreed']}  "
                      f"disagreed {r['disagreed']}  no-show {r['no_show']}  penalties {r['penalty']}  "
                      f"failed spot checks {r['spot_failed']}" for r in rows)
    _emit(args, rows, human or "no peers recorded yet")
    return 0


def _ledger_history(args: argparse.Namespace, led, ident: Identity) -> int:
    rows = led.history(args.limit)
    human = "\n".join(f"#{r['id']:<5} {r['kind']:<9} {r['amount']:>+10.4f}  job {r['job'][:10]} "
                      f"step {r['step']:<10} peer {r['peer'][:12]}" for r in rows)
    _emit(args, rows, human or "no entries yet")
    return 0


def _ledger_verify(args: argparse.Namespace, led, ident: Identity) -> int:
    try:
        damage = led.db.execute("PRAGMA quick_check").fetchone()[0]
        n, why = ((0, f"the database is damaged: {damage}") if damage != "ok"
                  else led.verify(ident.node_id, ident.public_key))
    except sqlite3.DatabaseError as exc:  # (a file cut short, or not SQLite at all)
        n, why = 0, f"the database is damaged: {exc}"
    obj = {"ok": False, "entry": n, "reason": why} if why else {"ok": True, "entries": n}
    lines = [f"ledger does NOT verify: {why}" if why
             else f"ledger verifies: {n} entries; chain, receipts and signed heads intact"]
    if args.peers:
        held = _peer_heads(args, led, ident.node_id, ident.public_key)
        obj["peers"] = held
        obj["ok"] = obj["ok"] and all(p["ok"] for p in held["answers"])
        lines += _describe_peer_heads(held)
    _emit(args, obj, "\n".join(lines))
    return 0 if obj["ok"] else 1


def _peer_heads(args: argparse.Namespace, led, me: str, key: bytes) -> dict:
    """Ask the running node to collect the heads its peers hold of this ledger, and hold the chain to
    each: a head this node signed that the chain no longer has means its history was cut or rebuilt."""
    from ledger.heads import Head, against_chain, signed_by
    from mesh.cli.client import Client

    got = Client.locate(_home(args), None).request("POST", "/ledger/peer-heads", {"wait": args.wait},
                                                   timeout=args.wait + 30)
    answers = []
    for ans in got["answers"]:
        heads = [Head(h["n"], h["hash"], h["sig"]) for h in ans["heads"]]
        count, hashes = led.chain_at({h.n for h in heads})
        problems = [f"entry {h.n}: not signed by this node (the peer made it up)" for h in heads
                    if not signed_by(h, me, key)]
        problems += [why for h in heads if signed_by(h, me, key) and (why := against_chain(h, hashes, count))]
        answers.append({"peer": ans["peer"], "heads": [h.n for h in heads], "ok": not problems,
                        "problems": problems})
    return {"asked": got["asked"], "answers": answers}


def _describe_peer_heads(held: dict) -> list[str]:
    lines = [f"{len(held['asked'])} linked peers asked for the heads they hold of this ledger; "
             f"{sum(bool(a['heads']) for a in held['answers'])} hold some"]
    for a in held["answers"]:
        if not a["heads"]:
            continue
        verdict = "match" if a["ok"] else "do NOT match: " + "; ".join(a["problems"])
        lines.append(f"  {a['peer'][:16]}: heads at entries {', '.join(map(str, a['heads']))} {verdict}")
    if not any(a["heads"] for a in held["answers"]):
        lines.append("  no peer holds a head yet (a node shares its head with three peers every 10 s): "
                     "nothing to check against")
    return lines


_LEDGER_VIEWS = {"explain": _ledger_explain, "export": _ledger_export, "balance": _ledger_balance,
                 "peers": _ledger_peers, "history": _ledger_history, "verify": _ledger_verify}


def _stop_on_sigterm() -> None:
    """SIGTERM stops `up`/`demo` like Ctrl-C does, so the nodes they started are stopped too. Ctrl-C is
    set explicitly: a shell starting us in the background (`cmd &`, no job control) hands SIGINT down
    ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _verify_receipts(args: argparse.Namespace) -> int:
    from ledger.export import VOUCH_FACTOR, check_challenge, verify_receipts

    if not args.arg:
        raise UserError("mesh ledger verify-receipts needs the FILE written by `mesh ledger export`")
    challenge = None if args.challenge is None else check_challenge(args.challenge)
    judged_by, judge = _payer_judge(args)
    checked = verify_receipts(Path(args.arg), judge, challenge)
    obj = {**checked.to_json(), "judged_by": judged_by}
    lines = [f"{checked.valid} receipts verify (signatures, payee, none twice); judged by "
             + (f"node {judged_by[:16]}" if judged_by else "nobody: no node home here, so every payer is unknown"),
             f"the file is signed by node {checked.node[:16]}'s own key" + (
                 f", for the challenge {checked.challenge!r}" if checked.challenge else
                 ", for no challenge" if checked.challenge == "" else ", with a challenge no export makes (below)")
             if checked.signed else "the file is not signed by its node: anyone holding a copy could show it"]
    past = f"from trusted payers past what it believes of them ({VOUCH_FACTOR:g}x the credits each moved with it)"
    for name, bucket, what in (("trusted", checked.trusted, "from payers it knows and trusts"),
                               ("unknown", checked.unknown, "from payers it never met (minted, perhaps)"),
                               ("distrusted", checked.distrusted, "from payers it distrusts (low reputation)"),
                               ("over_limit", checked.over_limit, past)):
        lines.append(f"  {bucket.receipts} {what}: {bucket.credits:g} credits"
                     + (f" (payers {', '.join(p[:12] for p in sorted(bucket.payers)[:5])})"
                        if bucket.payers and name != "trusted" else ""))
    lines.append(f"total: {obj['total']:g} credits (trusted payers only)")
    _emit(args, obj, "\n".join(lines + checked.problems))
    return 0 if not checked.problems else 1


def _payer_judge(args: argparse.Namespace):
    """(node id, judge) of the node home that checks an export: --home, else the default home if it
    holds a node; (None, None) on a machine with none."""
    from ledger.export import judge_with
    from ledger.store import Ledger
    from mesh.node.home import LEDGER_FILE
    from mesh.wire.identity import load

    home = _home(args)
    if not (home / LEDGER_FILE).exists():
        if args.home:
            raise UserError(f"no ledger in {home}: not a node home")
        return None, None
    me = load(home).node_id
    led = Ledger(home / LEDGER_FILE, readonly=True)
    try:
        return me, judge_with(led, me, _record_keys(home))
    finally:
        led.close()


def cmd_up(args: argparse.Namespace) -> int:
    from mesh.cli.local import LocalMesh

    directory = _expand(args.dir)
    extra = ["--credit-line", f"{UP_CREDIT_LINE:g}", *(["--no-model"] if args.no_model else []),
             *_node_passthrough(args.node_args)]  # the owner's flags last: argparse keeps the last value given
    mesh = LocalMesh(directory, args.nodes, lambda i: extra)
    t0 = time.monotonic()
    _stop_on_sigterm()
    try:
        mesh.start()
        mesh.wait_ready(args.timeout, lambda line: print(line, file=sys.stderr, flush=True))
        print(f"mesh of {args.nodes} nodes ready in {time.monotonic() - t0:.1f} s (Ctrl-C stops them all)")
        for n in mesh.nodes:
            print(f"  {n.node_id[:16]}  peer {n.listen}  API {n.api}  home {n.home}")
        first = mesh.nodes[0]
        # one-use tickets, not the token: an address stays in the browser's history (mesh/http/pagekeys.py)
        ticket = lambda: first.client.request("POST", "/tickets")["ticket"]  # noqa: E731
        print(f"editor: {first.api}/editor/#ticket={ticket()}  (one use; the page keeps the token for its tab)")
        print(f"dashboard: {first.api}/dashboard/#ticket={ticket()}")
        line = first.client.request("GET", "/status")["credit_line"]
        print(f"each node may spend {line:g} credits more than it earns (--credit-line; node options go after --)")
        r = max(1, min(3, args.nodes - 1))
        example = PYTHON_JOB if args.no_model else EXAMPLE_JOB
        print(f"try: mesh submit {shlex.quote(str(example))} --home {shlex.quote(str(first.home.resolve()))} "
              f"--redundancy {r} --wait (a step runs on nodes other than the submitter)", flush=True)
        while all(n.alive() for n in mesh.nodes):
            time.sleep(0.5)
        raise next(n for n in mesh.nodes if not n.alive()).exited()
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
        return 0
    finally:
        mesh.stop()


class _NodeOptions(argparse.ArgumentParser):
    """`mesh node`'s options as `mesh up` passes them through: a mistake is one line, before any node starts."""

    def error(self, message: str):
        raise UserError(f"mesh up -- NODE OPTIONS: {message}")


def _node_passthrough(items: list[str]) -> list[str]:
    """The node options after `mesh up ... --`, checked as `mesh node` would; those `mesh up` sets for each
    node itself (its home, its ports, whom it bootstraps from) are refused."""
    parser = _NodeOptions(prog="mesh node", add_help=False, allow_abbrev=False)
    _add_node_options(parser)
    managed = ("--home", "--listen", "--api", "--bootstrap")
    for item in items:
        if item.split("=", 1)[0] in managed:
            raise UserError(f"mesh up sets {item.split('=', 1)[0]} for each node itself; it cannot be passed after --")
    parser.parse_args(items)
    return list(items)


def parse_size(text: str) -> int:
    """'2GB', '512MiB', '1000000' → bytes (ConfigError on anything else)."""
    from mesh.node.owner import size_bytes

    try:
        return size_bytes(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _fetch_model(args: argparse.Namespace) -> int:
    """Start the fetch on the running node, then follow its event stream until it ends."""
    sha = args.arg.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{args.arg!r} is not a SHA-256 (64 hex digits): fetch names a model as peers advertise it")
    client = _client(args)
    body = {"sha256": sha, "max_bytes": min(parse_size(args.max_size), 4 << 30), "name": args.name or "",
            "sources": args.sources or None}
    st = client.request("POST", "/models/fetch", body)
    bar = sys.stderr.isatty() and not args.json
    try:
        st = _follow_fetch(client, st, time.monotonic() + args.timeout, bar)
    except KeyboardInterrupt:
        raise Interrupted(f"model {sha[:12]} goes on fetching on the node; GET /models/fetch shows it") from None
    finally:
        if bar:
            print(file=sys.stderr)
    if st["state"] == "fetching":
        raise ConfigError(f"model {sha[:12]} still fetching after {args.timeout:g} s (it goes on; see GET /models/fetch)")
    rate = st["size"] / st["seconds"] / 1e6 if st["seconds"] else 0.0
    _emit(args, st, f"fetched {st['name']} ({sha}): {st['size']:,} bytes in {st['seconds']:.1f} s "
                    f"({rate:.1f} MB/s), checked, and served by this node now" if st["state"] == "done"
                    else f"fetching model {sha[:12]} failed: {st['error']}")
    return 0 if st["state"] == "done" else 3


def _follow_fetch(client, st: dict, deadline: float, bar: bool) -> dict:
    """A fetch's status once it ended, or as it was at `deadline`, from GET /models/fetch/SHA/events (a
    progress bar on stderr as parts come, when `bar`). If the stream breaks (the node restarted, the
    connection dropped), one GET /models/fetch says where the fetch is; it is not polled."""
    sha = st["sha256"]
    if st["state"] != "fetching":
        return st
    try:  # (each read waits at most until the deadline: a stalled fetch's stream is quiet for 15 s at a time)
        for kind, ev in client.fetch_events(sha, min(60.0, max(deadline - time.monotonic(), 0.05))):
            st = ev or st
            if kind == "done" or time.monotonic() >= deadline:
                return st
            if bar and st["size"]:
                done = st["done_bytes"] / st["size"]
                print(f"\r[{'#' * int(done * 30):<30}] {done:6.1%} {st['done_bytes'] / 1e6:8.1f} of "
                      f"{st['size'] / 1e6:.1f} MB from {printable(st['source'][:12])}", end="", file=sys.stderr,
                      flush=True)
    except NodeUnreachable as exc:
        broke = str(exc)
    try:
        now = next((f for f in client.request("GET", "/models/fetch", shape=list) if f["sha256"] == sha), None)
    except NodeUnreachable as exc:
        raise NodeUnreachable(f"{broke}; then {exc}") from None
    if now is None:
        raise NodeUnreachable(f"{broke}; the node no longer knows this fetch (it restarted?): run the same "
                              "command again, it resumes from the parts written")
    if now["state"] == "fetching" and time.monotonic() < deadline:
        raise NodeUnreachable(f"{broke}; model {sha[:12]} is still fetching ({now['done_bytes']:,} of "
                              f"{now['size']:,} bytes): GET /models/fetch shows it")
    return now


def _model_role(sha: str) -> str:
    from mesh.steps.models import INSTRUCT_SHA256, default_model_sha

    return {default_model_sha(): "[llm steps' default] ", INSTRUCT_SHA256: "[chat's default] "}.get(sha, "")


def cmd_models(args: argparse.Namespace) -> int:
    from mesh.steps.registry import Registry

    if args.api and args.what != "fetch":  # (list, add and remove read the home's registry: --api was ignored)
        raise UserError(f"mesh models {args.what} works on a home's registry: give --home, not --api (--api is "
                        "for fetch)")
    reg = Registry(_home(args))
    if args.what == "list":
        rows = [dataclasses.asdict(e) for e in reg.entries()]
        human = "\n".join(f"{e['sha256'][:16]}  {e['name']:28} {_model_role(e['sha256'])}"
                           f"{e['path'] or '(package ' + e['package'] + ')'}"
                           for e in rows) or "no models (the default model package is not installed)"
        _emit(args, rows, human)
        return 0
    if not args.arg:
        need = {"add": "a GGUF file", "fetch": "the model's SHA-256"}.get(args.what, "a name or SHA-256")
        raise ConfigError(f"mesh models {args.what} needs {need}")
    if args.what == "fetch":
        return _fetch_model(args)
    if args.what == "add":
        e = reg.add(Path(args.arg), args.name or "")
        _emit(args, dataclasses.asdict(e), f"added {e.name} ({e.sha256}); restart the node to serve it")
    else:
        e = reg.remove(args.arg)
        _emit(args, dataclasses.asdict(e), f"removed {e.name} ({e.sha256}); restart the node to stop serving it")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mesh.cli.client import Client
    from mesh.cli.local import LocalMesh

    job_path = args.job or str(EXAMPLE_JOB)
    job = _load_job_file(job_path)
    directory = _expand(args.dir)
    if not 1 <= args.redundancy < args.nodes:  # (refused by the node once the whole mesh had started)
        raise UserError(f"--redundancy must be from 1 to {args.nodes - 1} with --nodes {args.nodes} (a step never runs "
                        "on the node that submitted it)")
    _stop_on_sigterm()
    with LocalMesh(directory, args.nodes) as mesh:
        t0 = time.monotonic()
        mesh.start()
        mesh.wait_ready(args.timeout, lambda line: print(line, file=sys.stderr, flush=True))
        print(f"mesh of {args.nodes} nodes on loopback ready in {time.monotonic() - t0:.1f} s")
        client: Client = mesh.nodes[0].client
        t1 = time.monotonic()
        job_id = client.request("POST", "/jobs", {"job": job, "redundancy": args.redundancy})["job_id"]
        report = _wait(client, job_id, args.timeout)
        print(_describe(report))
        print(f"job took {time.monotonic() - t1:.1f} s end to end ({time.monotonic() - t0:.1f} s with start-up)")
        print("credits per node:")
        from ledger.store import Ledger

        for n in mesh.nodes:
            led = Ledger(n.home / "ledger.db", readonly=True)
            print(f"  {n.node_id[:16]}  balance {led.balance():+g}")
            led.close()
    return 0 if report["status"] == "done" else EXIT_FAILED


def _add_node_options(sp: argparse.ArgumentParser) -> None:
    """`mesh node`'s options: most of NodeOptions, which cmd_node fills from them."""
    sp.add_argument("--listen", default="127.0.0.1:4750", help="peer gateway HOST:PORT (default 127.0.0.1:4750)")
    sp.add_argument("--api", default="127.0.0.1:4751", help="HTTP API HOST:PORT, loopback only (default 127.0.0.1:4751)")
    sp.add_argument("--bootstrap", action="append", default=[], metavar="ADDR",
                    help="a peer to join through, HOST:PORT or a multiaddr /ip4/H/tcp/P/p2p/ID (repeatable)")
    sp.add_argument("--transport", choices=["libp2p", "tcp"], default="libp2p",
                    help="libp2p (default): Noise-encrypted links, each peer's key proven by the handshake; "
                         "tcp: plain, unencrypted TCP for loopback tests and benchmarks only")
    sp.add_argument("--max-links", type=int, default=64, metavar="N",
                    help="peers to link on this node's own initiative, from gossip (default 64; links peers open "
                         "to it count, but it keeps room for 8 of its own choosing); beyond that, workers for "
                         "what jobs need are found in the DHT (8 per capability)")
    sp.add_argument("--rate", action="append", default=[], metavar="KEY=CREDITS",
                    help="what this node charges, signed into its peer record (repeatable): cpu_s per CPU-second "
                         "of python (default 1), tokens_1k per 1,000 tokens generated (10), scored_1k per 1,000 "
                         "tokens verified (2.5), scrape per page (1); a payer pays at most your own measured "
                         "work at these rates, and a receipt for more is refused")
    sp.add_argument("--max-rate", action="append", default=[], metavar="KEY=CREDITS",
                    help="the most this node pays a worker per unit, whatever the worker's card asks "
                         "(repeatable; same keys as --rate; default 4 times the default card: cpu_s 4, "
                         "tokens_1k 40, scored_1k 10, scrape 4)")
    sp.add_argument("--no-relay", action="store_true",
                    help="do not relay for peers behind NATs, even when this node is reachable (it relays by "
                         "default, with limits: 64 circuits, 256 MiB and one hour each, and --relay-budget)")
    sp.add_argument("--relay-budget", default="2GB", metavar="SIZE",
                    help="bytes an hour this node relays for others in all, a quarter of it for one network "
                         "(e.g. 500MB; default 2GB): past it, circuits end and new ones are refused until the "
                         "hour refills it")
    sp.add_argument("--network", default="homemesh-local", help="network id, 1 to 64 letters, digits, '.', '_' or '-'; nodes of other networks are refused")
    sp.add_argument("--advertise", metavar="HOST:PORT",
                    help="the address peers should dial (default: --listen; set it when listening on 0.0.0.0)")
    sp.add_argument("--frame-cap", type=int, default=1 << 20, metavar="BYTES",
                    help="largest peer frame accepted, 64 KiB to 64 MiB (default 1 MiB); larger frames drop the connection")
    sp.add_argument("--fault", choices=["wrong", "overclaim", "silent", "slow", "crash", "forge", "relay-drop", "relay-delay",
                                        "check-aware", "busy", "slander", "corrupt-model"],  # mesh.node.lifecycle.FAULTS
                    help="misbehave on purpose (tests and demos): wrong answers, right answers claiming the whole time limit "
                         "and every token allowed (overclaim), silence, slowness, crash, bad "
                         "signatures, (as a relay) forward nothing or forward late, answer right only what looks "
                         "like a spot check (check-aware), refuse every other step as busy, or tell every peer "
                         "that asks that each worker it asks about gave this node a wrong answer (slander), or "
                         "serve model files to peers with a byte of every part changed (corrupt-model)")
    sp.add_argument("--fault-after", type=float, metavar="SECONDS",
                    help="with --fault relay-drop or relay-delay: carry each circuit honestly this long first "
                         "(default 20)")
    sp.add_argument("--spot-rate", type=float, default=0.0, metavar="P",
                    help="with probability P per replica (e.g. 0.05), send its worker a step whose answer is "
                         "known (a replay of an accepted step) as a job of its own, at a random moment; a wrong "
                         "answer blacklists it and voids its unsettled answers; busy or no answer costs nothing "
                         "(default 0)")
    sp.add_argument("--blacklist", type=float, default=3600.0, metavar="SECONDS",
                    help="how long a worker that failed a spot check gets no work, 0 to a year (default 3600)")
    sp.add_argument("--core-log", action="store_true",
                    help="keep every input and decision of each job's cross-checking core in its report "
                         "(core_log), so `mesh.core.jobrun.replay_log` or a test can replay it")
    sp.add_argument("--collude", metavar="GROUP",
                    help="with --fault wrong: return the same wrong answer as the other nodes of GROUP")
    sp.add_argument("--allow-unsandboxed-python", action="store_true",
                    help="run peers' python steps even without bubblewrap (dangerous; off by default)")
    sp.add_argument("--no-model", action="store_true", help="do not load the default model (no llm steps)")
    sp.add_argument("--scrape-allow", action="append", default=[], metavar="CIDR_OR_HOST",
                    help="let scrape steps reach this private/loopback network or host (repeatable); by "
                         "default loopback, private, link-local and metadata addresses are refused")
    sp.add_argument("--browser", metavar="PATH", help="Chromium to drive for scrape steps (default: found on "
                    "PATH; without one, pages are fetched over plain HTTP and results say so)")
    sp.add_argument("--no-scrape", action="store_true", help="do not offer scrape steps to peers")
    sp.add_argument("--no-model-sharing", action="store_true",
                    help="do not send peers the files of the models this node serves (by default a linked peer "
                         "may fetch any of them, at most 32 MiB/s in all: `mesh models fetch`)")
    sp.add_argument("--fetch-models", metavar="SIZE",
                    help="fetch a model a peer's step needs from the peers serving it (checked part by part "
                         "against its SHA-256), up to SIZE of model files in all in HOME/models (e.g. 2GB; by "
                         "hand with `mesh models fetch` too); off by default. Placement sends such steps to "
                         "this node only while too few peers hold the model. The file is one a stranger's step "
                         "chose, parsed by llama.cpp outside the sandbox: turn it on only for a mesh you trust")
    sp.add_argument("--keep-jobs", type=int, default=1000, metavar="N",
                    help="finished jobs kept in memory (default 1000); older ones are read from the home's "
                         "jobs/ directory, and are no longer rechecked when a spot check catches a cheater")
    sp.add_argument("--credit-line", type=float, default=10.0, metavar="CREDITS",
                    help="credits this node may spend beyond what it has earned (default 10)")
    sp.add_argument("--require-credit", type=float, metavar="CREDITS",
                    help="as a worker, refuse steps from a submitter once this node has done this many credits "
                         "more work for it than it did for this node, as this node's own ledger counts (default: "
                         "no such limit)")
    sp.add_argument("--testimony-every", type=float, default=60.0, metavar="SECONDS",
                    help="how often to ask linked peers what their ledgers say of the other peers (shared "
                         "reputation: weighed by the verified work each did for this node; default 60)")
    sp.add_argument("--down-after", type=float, default=20.0, metavar="SECONDS",
                    help="call a linked peer down, and close its links, after this long without a word from it "
                         "(default 20; shorter limits send hellos more often, so three are missed first)")
    sp.add_argument("--threads", type=int, default=0, help="llama.cpp threads, at most 512 (default: up to 4)")
    from mesh.node.owner import parse_hours, parse_idle, parse_memory, parse_share, parse_steps

    sp.add_argument("--max-cpu", metavar="PERCENT", type=_owner_flag(parse_share),
                    help="the share of this machine's CPUs that peers' steps may use in all, e.g. 50%%: python "
                         "steps, model runners and the node's Chromium run under one CPU quota, and llama.cpp gets "
                         "no more threads than the cap's CPUs; a CPU-bound step runs slower, none is refused "
                         "(needs root and cgroup v1; the node refuses to start where it cannot enforce a cap). "
                         "Also max_cpu in HOME/node.toml")
    sp.add_argument("--max-memory", metavar="SIZE", type=_owner_flag(parse_memory),
                    help="memory all of peers' python steps and the node's Chromium may use together, e.g. 4GB or "
                         "512MiB (at least 64 MiB): one memory group holds them all, and no step may ask for more; "
                         "the models this node serves are loaded once and not counted in it. Also max_memory in "
                         "HOME/node.toml")
    sp.add_argument("--max-steps", metavar="N", type=_owner_flag(parse_steps),
                    help="peers' steps running here at once (default 16; one requester may hold up to 4 of them); "
                         "advertised in this node's signed record, so submitters queue rather than send more. "
                         "Also max_steps in HOME/node.toml, re-read on SIGHUP (a flag wins over the file)")
    sp.add_argument("--hours", metavar="HH:MM-HH:MM", type=_owner_flag(parse_hours),
                    help="start peers' steps only in this daily window, local time, e.g. 22:00-07:00 (it may wrap "
                         "past midnight); outside it the node is paused as by `mesh pause`: running steps finish, "
                         "peers are told and place elsewhere, unpunished. Also hours in HOME/node.toml")
    sp.add_argument("--when-idle", metavar="MINUTES", type=_owner_flag(parse_idle),
                    help="start peers' steps only once the machine has been idle this long: no keyboard or mouse "
                         "interrupts (/proc/interrupts), no active desktop session (logind's idle hint, where one "
                         "is set), and other programs using at most half of the CPUs. A headless machine has no "
                         "input to watch: there only the load counts (mesh status says what is watched). Steps "
                         "already running when the owner comes back finish. Also when_idle in HOME/node.toml")
    sp.add_argument("--model", metavar="PATH.gguf", help="serve this GGUF model instead of the default Gemma 3 270M")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh", description="homemesh: pool untrusted computers into one "
                                "cross-checked compute mesh. Each step of a job runs on several nodes and "
                                "is accepted only when a quorum of their signed answers agree.")
    p.add_argument("--version", action="version", version=f"mesh {__version__} (protocol {PROTOCOL_VERSION})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str, api: bool = False, json_flag: bool = False,
            home: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if home:  # not on commands that never touch a node home (up, demo, simulate, replay)
            sp.add_argument("--home", help="node home directory (default: $MESH_HOME or ~/.homemesh)")
        if api:
            sp.add_argument("--api", help="node API URL instead of --home (token: --home or $MESH_API_TOKEN)")
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON object")
        return sp

    add("init", cmd_init, "create a node key (node.key, mode 0600) and API token; prints the node id")

    _add_node_options(add("node", cmd_node, "run one node in the foreground; SIGINT/SIGTERM stop it cleanly"))

    sp = add("up", cmd_up, "start N nodes on loopback, wait until they know each other, print their addresses. "
             f"Each node may spend {UP_CREDIT_LINE:g} credits more than it earns (a node alone: 10), enough for "
             "dozens of long llm jobs on the default model (see README, 'What a job costs'). Options of "
             "`mesh node` go after --, given to every node: mesh up --nodes 3 -- --credit-line 5000 "
             "--spot-rate 0.05 --scrape-allow 127.0.0.1 --threads 2 (not --home, --listen, --api, --bootstrap: "
             "mesh up sets those)", home=False)
    sp.add_argument("--nodes", type=int, default=3, help="how many nodes, 1 to 64 (default 3)")
    sp.add_argument("--dir", default=".mesh", help="directory for the nodes' homes, node0 … (default .mesh)")
    sp.add_argument("--timeout", type=_seconds, default=180,
                    help="give up when the nodes do not all know each other after this many seconds (default 180)")
    sp.add_argument("--no-model", action="store_true", help="start nodes without the model")
    sp.add_argument("node_args", nargs="*", metavar="-- NODE OPTIONS",
                    help="options of `mesh node` for every node, after -- (see `mesh node --help`)")

    sp = add("submit", cmd_submit, "submit a job file to a node", api=True, json_flag=True)
    sp.add_argument("job", help="job file (JSON)")
    sp.add_argument("--redundancy", type=int, help="replicas per step (overrides the file)")
    sp.add_argument("--quorum", help="majority | unanimous | K-of-N (overrides the file)")
    sp.add_argument("--wait", action="store_true", help="wait for the result, showing progress on stderr")
    sp.add_argument("--timeout", type=_seconds, default=1800,
                    help="give up waiting after this many seconds (default 1800; the job goes on, exit 1)")
    sp.add_argument("--max-cost", type=float, metavar="CREDITS",
                    help="refuse to submit (exit 2, nothing sent) when the estimated cost is above CREDITS. The "
                         "estimate, printed on stderr (and as estimated_cost with --json), is an upper bound: each "
                         "step's limits (python: the job's timeout in CPU-seconds; llm: its max_tokens; scrape: "
                         "one page) at the dearest rate card of the workers the node knows (at most its "
                         "--max-rate), times max_replicas (default twice the redundancy). Spot checks are not in it")

    sp = add("job", cmd_job, "show a job's state and result", api=True, json_flag=True)
    sp.add_argument("job_id", help="the id `mesh submit` printed (or one of `mesh jobs`): any unique prefix of "
                    "at least 4 of its hex digits")
    sp.add_argument("--wait", action="store_true", help="wait for the job to end, showing progress on stderr")
    sp.add_argument("--timeout", type=_seconds, default=1800,
                    help="with --wait: give up after this many seconds (default 1800; the job goes on, exit 1)")

    sp = add("jobs", cmd_jobs, "list the jobs submitted from this node, newest first: running ones (also those "
             "resumed from its journal after a restart) and ended ones (from their saved reports)",
             api=True, json_flag=True)
    sp.add_argument("--limit", type=_count, default=50, help="at most this many (default 50, at most 1000)")

    sp = add("cancel", cmd_cancel, "give a running job up: its unsettled steps fail ('cancelled by its "
             "submitter'), workers still running them are told to stop, and those that had answered are paid "
             "for their work so far; an ended job cannot be cancelled", api=True, json_flag=True)
    sp.add_argument("job_id", help="the job to give up: its id or any unique prefix of at least 4 hex digits")

    sp = add("ask", cmd_ask, "plan a job from a question (part by part: pages scraped, computations in python, "
             "words from the instruct model), show it as a tree, and run it after you confirm", api=True,
             json_flag=True)
    sp.add_argument("query", nargs="+", help="the question, e.g. \"Summarise https://example.org\" or "
                    "\"What is the average of 3, 8 and 12?\"")
    sp.add_argument("--yes", "-y", action="store_true", help="run the plan without asking")
    sp.add_argument("--planner", choices=["auto", "rules", "model"], default="auto",
                    help="auto (= rules): the rules plan part by part in milliseconds, keeping every part, and "
                         "the instruct model answers the parts that ask for words; model: the base model "
                         "writes the whole plan (slower, often unusable; the rules stand in, and plan every question in "
                         "which they recognise a calculation)")
    sp.add_argument("--redundancy", type=int, help="replicas per step (default 3)")
    sp.add_argument("--plan-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="the most the model may take to plan (--planner model; default 60, at most 600); past "
                         "it the rules plan instead, and the tree says so")
    sp.add_argument("--plan-only", action="store_true", help="show the plan, do not run it")
    sp.add_argument("--save", metavar="FILE", help="also write the plan to FILE as a job file")
    sp.add_argument("--timeout", type=_seconds, default=1800,
                    help="give up waiting after this many seconds (default 1800; the job goes on, exit 1)")

    add("status", cmd_status, "show the node, its peers and rejected envelopes", api=True, json_flag=True)

    sp = add("pause", cmd_pause, "stop taking steps from peers: steps running here finish (and are paid), no new "
             "ones start, and linked peers are told at once so their placement skips this node without "
             "counting it against its reputation; stays paused across restarts until `mesh resume`",
             api=True, json_flag=True)
    sp.add_argument("--reason", help="why, shown in mesh status and the node's log (default: paused by its owner)")
    add("resume", cmd_resume, "take steps from peers again after `mesh pause`", api=True, json_flag=True)

    sp = add("doctor", cmd_doctor, "check this machine's set-up for a node in one command, and say what to fix: "
             "the home is writable, free disk, python steps run in bubblewrap unprivileged, Chromium starts, the "
             "default model loads, and with a node running on the home, its peers' clocks and whether peers reach "
             "it. Exits 0 when nothing fails, 1 when a check fails", json_flag=True)
    sp.add_argument("--browser", help="the Chromium to check (default: the one the node would find)")

    sp = add("ledger", cmd_ledger, "read this node's ledger (works while the node is stopped): balance, peers "
             "(ranked by reputation), history, verify (the hash chain and every receipt), explain ENTRY (why a "
             "credit or reputation change happened), export FILE (earned receipts, each with what this node "
             "knows of its payer, the file signed with this node's key), verify-receipts FILE (check an export "
             "offline: signatures, payee, nothing twice, the file's own signature; only payers the checking "
             "node (--home, or the default home) knows and trusts are counted, payers it never met or distrusts "
             "are reported apart)", json_flag=True)
    sp.add_argument("what", choices=["balance", "peers", "history", "verify", "explain", "export", "verify-receipts"],
                    help="what to read or check (see above)")
    sp.add_argument("arg", nargs="?", metavar="ENTRY|FILE", help="entry id for explain, file for export and verify-receipts")
    sp.add_argument("--limit", type=_count, default=100, help="history: newest N entries (default 100)")
    sp.add_argument("--challenge", metavar="TEXT",
                    help="export: sign the file for this challenge, chosen by whoever will check it; "
                         "verify-receipts: refuse a file not signed by its node for exactly this challenge "
                         "(receipts prove a worker id was paid; a fresh challenge proves the file was made by "
                         "that id's key, for you)")
    sp.add_argument("--peers", action="store_true",
                    help="verify: also ask the running node's linked peers for the heads of this ledger they "
                         "hold, and check the chain against each (a history cut or rebuilt, even re-signed "
                         "with this node's key, no longer matches them)")
    sp.add_argument("--wait", type=_seconds, default=5.0, metavar="S",
                    help="verify --peers: seconds to wait for answers (0.5 to 60, default 5)")

    sp = add("models", cmd_models, "the GGUF models this node serves, by SHA-256 (what jobs and peers name) and "
             "a local name: list, add PATH.gguf [--name NAME], remove NAME|SHA256, fetch SHA256 (from peers "
             "serving it, through the running node: each part checked as it comes and the whole file against "
             "the SHA-256, a progress bar meanwhile; the node serves it at once). Jobs may name a model by "
             "its name here; the node sends its SHA-256 to peers, and places steps only on peers holding it",
             api=True, json_flag=True)
    sp.add_argument("what", choices=["list", "add", "remove", "fetch"], help="what to do (see above)")
    sp.add_argument("arg", nargs="?", metavar="PATH|NAME|SHA256",
                    help="add: the GGUF file; remove: a name or SHA-256; fetch: the SHA-256")
    sp.add_argument("--name", help="add, fetch: the model's local name (default: the file name without .gguf; "
                                   "fetch: fetched-SHA12)")
    sp.add_argument("--from", dest="sources", action="append", metavar="NODE_ID",
                    help="fetch: only from this peer (repeatable; default: any linked peer serving it)")
    sp.add_argument("--max-size", default="4GiB", help="fetch: refuse a model larger than this (default 4GiB, the most)")
    sp.add_argument("--timeout", type=_seconds, default=3600, help="fetch: seconds to show progress for (default 3600)")

    sp = add("demo", cmd_demo, "start a local mesh, run the example job at redundancy 3, print results and credits",
             home=False)
    sp.add_argument("--nodes", type=int, default=4, help="nodes, 1 to 64 (one submits, the others work; default 4)")
    sp.add_argument("--dir", default=".mesh-demo", help="directory for the nodes' homes (default .mesh-demo)")
    sp.add_argument("--job", help="job file (default examples/demo-job.json)")
    sp.add_argument("--redundancy", type=int, default=3, help="replicas per step (default 3)")
    sp.add_argument("--timeout", type=_seconds, default=600,
                    help="give up on the mesh starting, and then on the job, after this many seconds (default 600)")

    from simulations.cli import add_commands

    add_commands(add)
    return p


def _count(text: str) -> int:
    """A --limit: a whole number from 1 (-1 gave every entry, which no --help said)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_COUNT:  # (past 2**63 SQLite raised OverflowError)
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_COUNT:,}, not {value}")
    return value


def _seconds(text: str) -> float:
    """A --timeout or --wait: a number of seconds above 0 (-5 printed "still running after -5 s" once the job
    was submitted and paid for; nan never timed out)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 1e7:  # (nan fails both)
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 10,000,000 seconds, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help()  # `mesh` alone: what it can do, on stdout; exit 2 as for any missing argument
        return EXIT_USER
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ConfigError) as exc:
        print(printable(f"mesh: error: {exc}"), file=sys.stderr)
        return EXIT_USER
    except Interrupted as exc:
        print(printable(f"mesh: {exc}"), file=sys.stderr)
        return 130
    except MeshError as exc:
        print(printable(f"mesh: {exc}"), file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`mesh ... | head`): nothing to say, and nobody to say it to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush would fail again)
        return EXIT_PIPE
    except OSError as exc:  # this machine's disk or files (full, read-only, gone): one line, not a traceback
        print(printable(f"mesh: {os_problem(exc)}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
