"""Running a benchmark variant against an older engine: check a commit out into a
temporary git worktree and run a worker process with that tree first on PYTHONPATH
(and its own kernel build cache, so the two trees do not rebuild each other's)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARKER = "KVSCOPE_BENCH_RESULT "


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(tree), commit], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tree)], check=False)


def run_worker(script: Path, worker_args: list[str], code_root: Path,
               cache_name: str | None = None) -> dict[str, Any]:
    """Run `script --worker ...` with `code_root`'s kvscope; its last result line."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    if cache_name is not None:
        env["KVSCOPE_CACHE"] = str(Path.home() / ".cache" / cache_name)
    proc = subprocess.run([sys.executable, str(script), "--worker", *worker_args], env=env,
                          cwd=code_root, text=True, capture_output=True, timeout=1800,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if not lines:
        raise RuntimeError(f"{worker_args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def report(result: dict[str, Any]) -> None:
    """What a worker prints for run_worker to read."""
    print(RESULT_MARKER + json.dumps(result), flush=True)
