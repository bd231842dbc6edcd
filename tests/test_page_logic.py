"""The scope's page logic (kvscope/scope/static/js/logic/*.js and the other DOM-free
modules) under node: every tests/js/*.test.mjs file is one node:test run, and one
case here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).resolve().parent / "js"
TEST_FILES = sorted(JS_TESTS.glob("*.test.mjs"))

pytestmark = pytest.mark.skipif(shutil.which("node") is None,
                                reason="node runs the scope's page-logic tests")


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[f.name for f in TEST_FILES])
def test_node_test_file_passes(test_file: Path) -> None:
    proc = subprocess.run(["node", "--test", str(test_file)], capture_output=True, text=True,
                          timeout=120, cwd=JS_TESTS)
    assert proc.returncode == 0, f"node --test {test_file.name} failed:\n{proc.stdout}{proc.stderr}"
