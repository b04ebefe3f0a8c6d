"""How every benchmark prints its figures: one JSON object, or `name value` lines."""

from __future__ import annotations

import json


def emit(res: dict, as_json: bool) -> None:
    print(json.dumps(res) if as_json else "\n".join(f"{k} {v}" for k, v in res.items()))
