"""OpenAI chat completions as mesh jobs, sans-I/O: a request becomes a one-step llm job (its messages
rendered by the model's own chat template, or, for a base model without one, as a `User:`/`Assistant:`
transcript the model continues), and the cross-checked step becomes a `chat.completion`
(or its chunks) carrying `x_homemesh`: the replicas, their signed answers and the rule that accepted it.
While replicas generate, only the prefix that a quorum of them has already produced is streamed."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from mesh.errors import UserError
from mesh.steps.chat_template import ChatTemplate, TemplateError
from mesh.wire.attest import attestation
from mesh.wire.messages import SignedAnswer

STEP = "chat"
DEFAULT_MAX_TOKENS = 128
TURN_STOP = "\nUser:"
# refused when set (not false, 0 or empty): accepted and dropped, the client got an answer it had not asked for
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "audio", "modalities", "prediction",
               "logprobs", "top_logprobs", "logit_bias", "frequency_penalty", "presence_penalty")


class ChatError(UserError):
    """A chat request this mesh cannot serve; `param` names the field, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ChatError(f"{where}: only text content parts are supported", "messages")
        parts.append(part["text"])
    return "".join(parts)


ROLES = {"system": "system", "developer": "system", "user": "user", "tool": "user", "assistant": "assistant"}


def messages_of(messages: list[dict]) -> list[dict[str, str]]:
    """The request's messages as {role, content} text, in the three roles every chat template knows; the
    last must be the user's (or a tool's), since the model answers it."""
    out = [{"role": ROLES[m.get("role", "")], "content": _text(m.get("content"), f"messages[{i}]").strip()}
           for i, m in enumerate(messages)]
    if out[-1]["role"] != "user":
        raise ChatError("the last message must be the user's (or a tool's)", "messages")
    return out


def prompt_of(messages: list[dict]) -> str:
    """The transcript a base model continues: system text first, then `User:`/`Assistant:` turns."""
    said = messages_of(messages)
    system = [m["content"] for m in said if m["role"] == "system"]
    turns = [f"{m['role'].title()}: {m['content']}" for m in said if m["role"] != "system"]
    head = "\n".join(system) + "\n\n" if system else ""
    return head + "\n".join(turns) + "\nAssistant:"


def job_for(req: dict, redundancy: int, quorum: str, template: ChatTemplate | None = None) -> dict:
    """The one-step job that answers a chat request (a dict as the client sent it): with the model's chat
    `template`, its rendering of the messages (the model ends its turn with its end-of-turn token);
    without, the transcript, cut where the model starts the user's next turn."""
    for key in UNSUPPORTED:
        if req.get(key):
            raise ChatError(f"{key} is not supported by this mesh", key)
    if req.get("n") not in (None, 1):
        raise ChatError("n must be 1: the mesh returns the one answer its replicas agreed on", "n")
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    if len(stop) > 7:
        raise ChatError("at most 7 stop strings", "stop")
    try:
        prompt = template.render(messages_of(req["messages"])) if template else prompt_of(req["messages"])
    except TemplateError as exc:
        raise ChatError(str(exc), "messages") from None
    params: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": req.get("max_completion_tokens") or req.get("max_tokens") or DEFAULT_MAX_TOKENS,
        "stop": stop if template else [TURN_STOP, *stop], "model": req.get("model") or "default",
    }
    if req.get("temperature"):
        params["temperature"] = req["temperature"]
    if req.get("seed") is not None:
        params["seed"] = req["seed"]
    schema = _json_schema(req.get("response_format") or {})
    if schema is not None:
        params["json_schema"] = schema
    return {"name": "chat completion", "redundancy": redundancy, "quorum": quorum,
            "steps": [{"id": STEP, "kind": "llm", "params": params}]}


def _json_schema(fmt: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a `response_format` asks the output to follow (None: plain text)."""
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}  # (a string or a list here raised AttributeError: a 500)
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ChatError("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return schema
    if fmt.get("type") not in (None, "text"):
        raise ChatError(f"response_format type {fmt.get('type')!r} is not supported", "response_format")
    return None


def agreed_prefix(texts: list[str], needed: int) -> str:
    """The longest prefix that at least `needed` of `texts` start with ('' when fewer texts)."""
    if needed < 1 or len(texts) < needed:
        return ""
    ordered = sorted(texts)
    best = ""
    for i in range(len(ordered) - needed + 1):  # in sorted order, a shared prefix spans a window
        a, b = ordered[i], ordered[i + needed - 1]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        if n > len(best):
            best = a[:n]
    return best


def content_of(output: Any) -> str:
    return output.lstrip() if isinstance(output, str) else json.dumps(output)


def homemesh(report: dict, signed: Mapping[tuple[str, str], SignedAnswer], quorum: str, needed: int,
             model: str = "") -> dict:
    """The `x_homemesh` object: the model's SHA-256 every replica ran, who answered what, signed, and the
    rule that accepted (or refused) it."""
    step = report["steps"][STEP]
    replicas = []
    for r in step["replicas"]:
        entry = {"node": r["node"], "digest": r["digest"], "agreed": r["agreed"], "role": r.get("role", "generate")}
        if r.get("error"):
            entry["error"] = r["error"]
        answer = signed.get((STEP, r["node"]))
        entry.update(attestation(answer) if answer is not None else {"signature": None})
        replicas.append(entry)
    agreeing = sum(r["agreed"] for r in step["replicas"])
    rule = {"quorum": quorum, "needed": needed, "agreeing": agreeing,
            "replicas": len(step["replicas"]), "compare": step.get("compare", "exact"),
            "text": (f"accepted: {agreeing} of {len(step['replicas'])} replicas gave this answer "
                     f"({needed} needed; under dissent the agreeing side must also outvote every other answer)")
            if step["status"] == "done" else f"not accepted: {step.get('error', step['status'])}"}
    return {"job_id": report["job_id"], "step": STEP, "model": model, "status": step["status"], "digest": step["digest"],
            "rule": rule, "replicas": replicas, "credits_spent": report.get("credits_spent", 0.0)}


def usage(report: dict) -> dict:
    work = next((r.get("work", {}) for r in report["steps"][STEP]["replicas"] if r["agreed"]), {})
    completion = int(work.get("tokens", 0))
    prompt = int(work.get("prompt_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(report: dict, max_tokens: int) -> str:
    return "length" if usage(report)["completion_tokens"] >= max_tokens else "stop"


def completion(cid: str, model: str, report: dict, x_homemesh: dict, max_tokens: int) -> dict:
    text = content_of(report["steps"][STEP]["output"])
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason(report, max_tokens), "logprobs": None}],
            "usage": usage(report), "x_homemesh": x_homemesh}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, **extra: Any) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
