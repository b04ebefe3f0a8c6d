"""What a scrape step returns, from a page's HTML (after JavaScript ran, when a browser fetched it): the
title, the visible text, the links (absolute), CSS-selected parts and tables. Pure: BeautifulSoup only."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from bs4 import BeautifulSoup

MAX_LINKS = 500
MAX_MATCHES = 100
MAX_TABLES = 20
MAX_ROWS = 500


def _text(el) -> str:
    return " ".join(el.get_text(" ", strip=True).split())


def extract(html: str, base_url: str, params: dict) -> dict:
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
        out["selected"] = {name: [_text(el) for el in soup.select(css)[:MAX_MATCHES]] for name, css in selectors.items()}
    if params.get("tables", False):
        out["tables"] = [[[_text(cell) for cell in row.find_all(["th", "td"])] for row in table.find_all("tr")[:MAX_ROWS]]
                         for table in soup.find_all("table")[:MAX_TABLES]]
    return out
