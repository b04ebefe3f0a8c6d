"""What a scrape step returns, from a page's HTML (after JavaScript ran, when a browser fetched it): the
title, the visible text, the links (absolute), CSS-selected parts and tables. Pure: BeautifulSoup only."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from mesh.core.dag import Job
from mesh.errors import JobError, StepFailed

MAX_LINKS = 500
MAX_MATCHES = 100
MAX_TABLES = 20
MAX_ROWS = 500


def _text(el) -> str:
    return " ".join(el.get_text(" ", strip=True).split())


def selector_error(css: str) -> str:
    """'' when BeautifulSoup (soupsieve) can use this CSS selector; otherwise why not. An unparsable one
    raised SelectorSyntaxError out of the worker's task, which then sent no answer at all."""
    import soupsieve  # imported at the first selector checked: ~6 MiB (with bs4) an idle node does not need

    try:
        soupsieve.compile(css)
    except soupsieve.SelectorSyntaxError as exc:
        return f"{css[:100]!r} is not a CSS selector ({str(exc).splitlines()[0][:200]})"
    return ""


def selectors_error(params: dict) -> str:
    """'' when every selector of a scrape step's `params` is usable; otherwise why the first is not."""
    return next(filter(None, map(selector_error, (params.get("selectors") or {}).values())), "")


def check_selectors(job: Job, source: str = "job") -> None:
    """Raise JobError for the first scrape step with a selector BeautifulSoup cannot use (the node's API
    and the CLI run this before a job is sent, as they do check_grammars)."""
    for step in job.steps:
        why = selectors_error(step.params) if step.kind == "scrape" else ""
        if why:
            raise JobError(f"{source}: step {step.id!r}: selectors: {why}")


def extract(html: str, base_url: str, params: dict) -> dict:
    """The page's parts a scrape step asked for; StepFailed for a selector BeautifulSoup cannot use."""
    why = selectors_error(params)
    if why:
        raise StepFailed(f"selectors: {why}")
    # imported where a page is parsed (extract_proc's limited child), not by an idle node
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for el in soup(["script", "style", "noscript", "template"]):
        el.decompose()
    max_chars = params.get("max_chars", 20000)
    text = _text(soup.body or soup)
    out: dict = {"url": base_url, "title": _text(soup.title) if soup.title else "",
                 "text": text[:max_chars], "truncated": len(text) > max_chars}
    if params.get("links", True):
        links: list[str] = []
        for a in soup.find_all("a", href=True):
            href = urljoin(base_url, a["href"].strip())
            if urlsplit(href).scheme in ("http", "https") and href not in links:
                links.append(href)
                if len(links) >= MAX_LINKS:
                    break
        out["links"] = links
    selectors = params.get("selectors", {})
    if selectors:
        # each match cut as the text is: 100 nested matches of a 1 MB page were 100 million characters
        out["selected"] = {name: [_text(el)[:max_chars] for el in soup.select(css)[:MAX_MATCHES]]
                           for name, css in selectors.items()}
    if params.get("tables", False):
        out["tables"] = [[[_text(cell) for cell in row.find_all(["th", "td"])] for row in table.find_all("tr")[:MAX_ROWS]]
                         for table in soup.find_all("table")[:MAX_TABLES]]
    return out
