"""Test isolation: Ultralytics settings, weights and runs live in a throwaway folder, never in the user's home."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="dsmoe-tests-"))
os.environ["YOLO_CONFIG_DIR"] = str(_HOME / "config")  # read once when ultralytics is imported
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def home() -> Path:
    return _HOME


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 900):
    """Run a command in a fresh process of this environment (site hooks included), env as given."""
    import subprocess

    return subprocess.run(cmd, cwd=cwd, env=os.environ if env is None else env, capture_output=True, text=True,
                          timeout=timeout)


def run_python(code: str, cwd: Path, env: dict | None = None):
    """Run ``python -c code`` in a fresh interpreter of this environment."""
    return run([sys.executable, "-c", code], cwd, env)
