"""A small HTTP client for a node's API, used by the CLI. Failures become one-line UserErrors."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.errors import AuthError, ConfigError, NodeUnreachable, UserError
from mesh.node.home import RUNTIME_FILE, TOKEN_FILE, RuntimeInfo, home_in_use, read_token


class BadAnswer(NodeUnreachable):
    """The API answered JSON of a shape no homemesh node sends (another server, another version)."""


class Answer(dict):
    """A JSON object the node answered: a key it lacks is BadAnswer, naming the key and the server."""

    def __init__(self, base: str, data: dict):
        super().__init__(data)
        self.base = base

    def __missing__(self, key: object):
        raise BadAnswer(f"{self.base} answered without {key!r}: is it a homemesh node's API, of this version?")


@dataclass(frozen=True)
class Client:
    base: str
    token: str

    @classmethod
    def locate(cls, home: Path | None, api: str | None) -> "Client":
        """--api URL (token from --home or MESH_API_TOKEN) or the running node found in --home."""
        if api:
            token = (read_token(home) if home and (home / TOKEN_FILE).exists()
                     else os.environ.get("MESH_API_TOKEN", "").strip())
            if not token:
                raise ConfigError("with --api, give --home of that node or set MESH_API_TOKEN")
            return cls(api.rstrip("/"), token)
        if home is None:
            raise ConfigError("give --home DIR or --api URL (or set MESH_HOME)")
        info = RuntimeInfo.read(home)
        if not home_in_use(home):
            raise ConfigError(f"no node is running in {home} (its {RUNTIME_FILE} is left from a run that ended); "
                              f"start one with `mesh node --home {home}`")
        return cls(info.api, read_token(home))

    def request(self, method: str, path: str, body: object = None, timeout: float = 30,
                shape: type = dict) -> Any:
        """The node's JSON answer, of the `shape` asked for (a dict, or a list); its objects are Answers, so a key
        the CLI reads and the answer lacks is a one-line error, not a KeyError (--api at another server)."""
        try:
            with self._open(method, path, body, timeout) as resp:
                got = json.loads(resp.read(), object_hook=lambda d: Answer(self.base, d))
            if not isinstance(got, shape):
                raise BadAnswer(f"{self.base} answered {path} with a JSON {type(got).__name__}, not the "
                                f"{'object' if shape is dict else 'list'} a homemesh node sends: is it one's API?")
            return got
        except OSError as exc:  # a reset or a timeout while reading the answer
            raise NodeUnreachable(f"the node API at {self.base} stopped answering: {exc}") from None
        except http.client.HTTPException as exc:  # a cut-off answer, or no HTTP at all (--api at a peer port)
            raise NodeUnreachable(f"{self.base} did not answer as an HTTP server does ({type(exc).__name__}): is it "
                                  "a homemesh node's API?") from None
        except (ValueError, RecursionError):
            raise NodeUnreachable(f"{self.base} answered something other than JSON: is it a homemesh node's "
                                  "API?") from None

    def events(self, job_id: str, timeout: float = 60, keepalive: bool = False) -> Iterator[tuple[str, dict]]:
        """(kind, data) of a job's server-sent events, from the first to `done`. `timeout` bounds each
        read; the node sends a keep-alive comment every 15 s, so only a dead node trips it (`keepalive`:
        they come too, as for stream())."""
        return self.stream(f"/jobs/{job_id}/events", f"job {job_id}", timeout, keepalive)

    def fetch_events(self, sha: str, timeout: float = 60) -> Iterator[tuple[str, dict]]:
        """(kind, data) of a model fetch's server-sent events: `progress` (its status) as parts come, then
        `done` (its status at the end: done or failed). `timeout` bounds each read, as for events()."""
        return self.stream(f"/models/fetch/{sha}/events", f"model fetch {sha[:12]}", timeout, keepalive=True)

    def stream(self, path: str, what: str, timeout: float = 60,
               keepalive: bool = False) -> Iterator[tuple[str, dict]]:
        """(kind, data) of the server-sent events at `path` until `done`; NodeUnreachable (naming `what`)
        when the stream breaks, a read waits longer than `timeout`, or it ends before `done`. `keepalive`:
        the node's keep-alive comments come too, as ("", {}), so a reader with a deadline sees time pass
        while nothing happens."""
        try:
            with self._open("GET", path, None, timeout) as resp:
                kind, data = "message", []
                for raw in resp:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith(":") and keepalive:
                        yield "", {}
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield kind, json.loads("\n".join(data))
                        if kind == "done":
                            return
                        kind, data = "message", []
        except (OSError, http.client.HTTPException) as exc:  # (a chunk cut off: IncompleteRead)
            raise NodeUnreachable(f"the event stream of {what} broke: {exc or type(exc).__name__}") from None
        raise NodeUnreachable(f"the event stream of {what} ended before {what} did")

    def _open(self, method: str, path: str, body: object, timeout: float):
        data = None if body is None else _json_bytes(body)
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, RecursionError, AttributeError, OSError):  # (not a node's JSON error)
                message = exc.reason
            if exc.code == 401:
                raise AuthError(f"{self.base} refused the API token ({message}): give --home of that node (the "
                                "CLI reads HOME/api-token), or with --api set MESH_API_TOKEN to that file's "
                                "contents") from None
            raise UserError(f"{self.base}: {message}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeUnreachable(f"cannot reach the node API at {self.base}: {reason}") from None
        except (http.client.InvalidURL, ValueError) as exc:  # a bad --api, a token with a newline, a bad timeout
            raise UserError(f"cannot ask the node API at {self.base}: {exc}") from None


def _json_bytes(body: object) -> bytes:
    """A request body: UTF-8 as it is (escaped, a job file of 2.4 MB of 'é' grew past the API's 4 MiB and the
    node hung up), escaped only when it holds a lone surrogate, which no UTF-8 can (the node then says why)."""
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body).encode()
