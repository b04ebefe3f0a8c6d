"""How the node's own pages (the editor, the dashboard) come by the API token, and when they may send it.

A token in a page's address (`/editor#token=…`, as `mesh up` printed) stays in the browser's history and
session files, whatever the page does with it after (the red team of 2026-12-07 read it from Chromium's
History database): `mesh up` prints a one-use ticket instead, which the page trades for the token once
(`POST /tickets/redeem`); a used ticket is worth nothing. And a token kept in the tab's storage went, after
a reload, to whatever process held the node's port by then (the node stopped, the machine restarted and
the browser restored the tab): the page sends a kept token only once the server at its address proves it
holds it — an HMAC of a nonce the page drew and the address the page sees (`GET /prove`), which no process
without the token can make, nor borrow from a node at another address."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field

from mesh.http.api_models import ERRORS, ErrorBody, Strict
from mesh.http.common import ApiError, authorised
from mesh.http.facade import NodeFacade

MAX_TICKETS = 64  # unused tickets held; past it the oldest goes (each `mesh up` takes two)
PROOF_LABEL = "homemesh-prove"  # (the HMAC's message starts with it: the token keys nothing else)
NONCE = r"^[0-9a-f]{32,128}$"


class Tickets:
    """One-use tickets for the API token, held in memory: a restarted node honours none."""

    def __init__(self, most: int = MAX_TICKETS):
        self.most = most
        self.held: OrderedDict[str, None] = OrderedDict()

    def issue(self) -> str:
        ticket = secrets.token_hex(16)
        self.held[ticket] = None
        while len(self.held) > self.most:
            self.held.popitem(last=False)
        return ticket

    def redeem(self, ticket: str) -> bool:
        """Whether `ticket` was issued and unused (it is used now)."""
        return self.held.pop(ticket, False) is None


def proof(token: str, host: str, nonce: str) -> str:
    """What the page computes too (page.js, `proven`): HMAC-SHA256 keyed by the token."""
    return hmac.new(token.encode(), f"{PROOF_LABEL} {host.lower()} {nonce}".encode(), hashlib.sha256).hexdigest()


class Ticket(BaseModel):
    ticket: str = Field(description="32 hex digits: open /editor/#ticket=… or /dashboard/#ticket=… with it, once")


class RedeemBody(Strict):
    ticket: str = Field(pattern=r"^[0-9a-f]{32}$")


class TokenReply(BaseModel):
    token: str


class Proof(BaseModel):
    proof: str = Field(description="hex HMAC-SHA256 keyed by the API token of 'homemesh-prove <Host> <nonce>'")


def page_key_routes(app: FastAPI, node: NodeFacade) -> None:
    tickets = Tickets()  # this API's own

    @app.post("/tickets", dependencies=[Depends(authorised)], status_code=201, responses=ERRORS,
              summary="A one-use ticket a page of this node trades for the API token (what `mesh up` prints)")
    async def issue() -> Ticket:
        return Ticket(ticket=tickets.issue())

    @app.post("/tickets/redeem", responses={**ERRORS, 404: {"model": ErrorBody, "description": "unknown or used"}},
              summary="The API token for a ticket of /tickets, once (no token needed)")
    async def redeem(body: RedeemBody) -> TokenReply:
        if not tickets.redeem(body.ticket):
            raise ApiError(404, "this ticket is unknown or was used: open the address `mesh up` printed in a new "
                                "tab, or paste <node home>/api-token into the Token field")
        return TokenReply(token=node.token)

    @app.get("/prove", responses=ERRORS,
             summary="Proof that this server holds the API token, for a page about to send it (no token needed)")
    async def prove(request: Request, nonce: str = Query(pattern=NONCE, description="32-128 hex digits")) -> Proof:
        return Proof(proof=proof(node.token, request.headers.get("host", ""), nonce))
