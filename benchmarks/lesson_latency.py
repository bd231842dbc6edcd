"""What a lesson costs the reader on this machine: for each lesson page on a real
`kvscope serve` (the bundled model, its defaults), the seconds from opening the page
to its first picture, and from pressing its run button again to the next picture
(the server's answer received and the following frame drawn), in headless Chromium.

    .venv/bin/python benchmarks/lesson_latency.py [--pages tokens,sampling] [--repeats 3]
        [--save benchmarks/results/lesson-latency.json] [-- extra kvscope serve options]

The server runs in its own process with the benchmark's environment; the table shows
the median of the repeats for each page and the API call it made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("KVSCOPE_CHROMIUM", "/usr/bin/chromium")
PAGES = ["tokens", "embeddings", "attention-heads", "rope", "transformer-block", "sampling",
         "prefill-decode", "why-kv-cache", "attention-math", "kv-cache", "prefix-caching"]
NOT_DRAWN = ("", "No run yet.", "No result yet.")
RERUN_WAIT_MS = 3_000  # how long a click may take to send its request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kvscope.cli", "serve", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"kvscope serve exited: {proc.stderr.read().decode()[-2000:]}")
    proc.kill()
    raise RuntimeError("kvscope serve did not start in 300 s")


def is_lesson_call(response: Any) -> bool:
    return is_lesson_request(response.request)


def is_lesson_request(request: Any) -> bool:
    return "/scope/api/" in request.url and request.method == "POST"


def readout_drawn(page: Any) -> None:
    page.wait_for_function(
        "(notDrawn) => { const r = document.querySelector('#readout');"
        " return r && !notDrawn.includes(r.textContent.trim()); }", arg=list(NOT_DRAWN))


def next_frame(page: Any) -> float:
    return page.evaluate(
        "() => new Promise(r => requestAnimationFrame(() => r(performance.now())))")


def measure_page(browser: Any, base: str, name: str) -> dict[str, Any]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base)
    page = context.new_page()
    page.set_default_timeout(120_000)
    start = time.perf_counter()
    with page.expect_response(is_lesson_call) as first:
        page.goto(f"/lessons/{name}.html")
    readout_drawn(page)
    opened = time.perf_counter() - start
    call = first.value.url.split("/scope/api/")[-1]
    button = page.locator("form button[type=submit]").first
    again = None
    if button.count():  # pages that skip a run identical to the one shown send nothing
        clicked = page.evaluate("() => performance.now()")
        try:
            with page.expect_request(is_lesson_request, timeout=RERUN_WAIT_MS) as sent:
                button.click()
            sent.value.response()  # waits for the answer
            again = (next_frame(page) - clicked) / 1e3
        except PlaywrightTimeout:
            again = None
    context.close()
    return {"page": name, "call": call, "open_to_picture_s": opened, "click_to_picture_s": again}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", default=",".join(PAGES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--save", type=Path)
    p.add_argument("serve_args", nargs="*", help="options passed on to kvscope serve")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_server(port, args.serve_args)
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            for _ in range(args.repeats):
                for name in args.pages.split(","):
                    print(f"{name}...", file=sys.stderr, flush=True)
                    rows.setdefault(name, []).append(
                        measure_page(browser, f"http://127.0.0.1:{port}", name))
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(render(rows))
    if args.save:
        args.save.write_text(json.dumps({"cpu": platform.processor(), "runs": rows,
                                         "serve_args": args.serve_args}, indent=2))


def render(rows: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"{'lesson':<20}{'API call':<26}{'open -> picture s':>18}{'run -> picture s':>18}"]
    for name, runs in rows.items():
        opened = statistics.median(r["open_to_picture_s"] for r in runs)
        clicks = [r["click_to_picture_s"] for r in runs if r["click_to_picture_s"] is not None]
        again = f"{statistics.median(clicks):.2f}" if clicks else "-"
        lines.append(f"{name:<20}{runs[0]['call']:<26}{opened:>18.2f}{again:>18}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
