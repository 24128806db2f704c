"""Shared pytest fixtures for the Python tests (tests/python/*): a real server per test.

Helpers live in `esgf_server.py` beside this file, so test modules can import them (`from esgf_server import
...`); this file only declares fixtures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from esgf_server import EsgfServer, new_operator_token  # noqa: E402


@pytest.fixture
def server(tmp_path: Path):
    """A running server over a fresh data directory, stopped (SIGTERM) at the end of the test."""
    srv = EsgfServer(tmp_path / "data", new_operator_token()).start()
    try:
        yield srv
    finally:
        srv.stop()
