"""Drive the playground page in headless Chromium as a person would, and take a screenshot.

    python benchmarks/playground_screenshot.py saved_models/default   # serves it, writes benchmarks/playground.png
    python benchmarks/playground_screenshot.py --url http://127.0.0.1:8501/ --out shot.png --json

It opens the page, sets count, top-k and seed, clicks Generate, reads the names and their marks off
the page, types a name, waits for the probability view and reads its rows, then saves a screenshot
of the whole page. ``--json`` prints what it read. Given a run directory it starts ``kmlp serve`` on
a free port of 127.0.0.1 and stops it at the end. Needs Debian's ``chromium`` and
``chromium-driver`` and the ``selenium`` package (installed by ``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, as root, on a machine whose only network is the loopback: no sandbox, no GPU, no
# background connections (refused here, and slow to fail).
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A Selenium driver for Debian's headless Chromium, quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="kmlp-chromium-")
    options.add_argument(f"--user-data-dir={profile.name}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


def drive(driver, url: str, out: Path, count: int = 12, top_k: int = 0, seed: int = 42,
          name: str = "emma", timeout: float = 30) -> dict:
    """Use the page at ``url``: generate names, inspect ``name``, save a screenshot to ``out``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    find = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    driver.get(url)
    wait.until(lambda d: find("body").get_attribute("data-ready") == "true")
    for field, value in (("count", count), ("top-k", top_k), ("seed", seed)):
        box = find(f"#{field}")
        box.clear()
        box.send_keys(str(value))
    find("#generate").click()
    wait.until(lambda d: find("#names").get_attribute("data-state") == "done"
               and len(d.find_elements(By.CSS_SELECTOR, "#names li")) == count)
    names = driver.execute_script(
        "return [...document.querySelectorAll('#names li')].map(li => ({name: li.dataset.name, "
        "found_in: li.dataset.foundIn || null, mark: (li.querySelector('.mark') || {}).textContent || null}))")
    box = find("#name")
    box.clear()
    box.send_keys(name)
    wait.until(lambda d: find("#heatmap").get_attribute("data-state") == "done"
               and find("#heatmap").get_attribute("data-text") == name)
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#heatmap tbody tr')].map(tr => ({"
        "context: tr.querySelector('td.context').textContent, next: tr.dataset.next, "
        "p: Number(tr.dataset.p), cells: [...tr.querySelectorAll('td.cell')].map(td => Number(td.dataset.p)), "
        "outlined: [...tr.querySelectorAll('td.actual')].map(td => td.title)}))")
    for _ in range(2):  # the window's height to the page's: the screenshot shows all of it
        page_height = driver.execute_script("return document.documentElement.scrollHeight")
        chrome_height = driver.execute_script("return window.outerHeight - window.innerHeight")
        driver.set_window_size(driver.get_window_size()["width"], page_height + chrome_height)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return {"names": names, "summary": find("#names-summary").text, "rows": rows,
            "inspect_summary": find("#inspect-summary").text,
            "embedding_points": len(driver.find_elements(By.CSS_SELECTOR, "#embedding .point")),
            "errors": [find(f"#{e}").text for e in ("generate-error", "inspect-error") if find(f"#{e}").text],
            "screenshot": str(out)}


@contextmanager
def kmlp_serve(run_dir, timeout: float = 180):
    """``kmlp serve RUN_DIR`` on a free port of 127.0.0.1; yields its URL, stops it with SIGINT."""
    process = subprocess.Popen([sys.executable, "-m", "kmlp", "serve", str(run_dir), "--port", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"kmlp serve {run_dir} did not start (exit status {process.poll()})")
            match = re.search(r"playground:\s+(\S+)", line)
            url = match and match.group(1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", help="run directory to serve (or give --url)")
    p.add_argument("--url", help="a playground already running, e.g. http://127.0.0.1:8501/")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "playground.png"),
                   help="screenshot file (default benchmarks/playground.png)")
    p.add_argument("--count", type=int, default=12, help="names to generate (default 12)")
    p.add_argument("--top-k", type=int, default=0, help="top-k on the page (default 0: all)")
    p.add_argument("--seed", type=int, default=42, help="seed on the page (default 42)")
    p.add_argument("--name", default="emma", help="name typed into the probability view (default emma)")
    p.add_argument("--json", action="store_true", help="print what was read off the page as JSON")
    args = p.parse_args()
    if bool(args.run_dir) == bool(args.url):
        p.error("give a run directory or --url, not both")
    with (kmlp_serve(args.run_dir) if args.run_dir else _given(args.url)) as url, chromium() as driver:
        seen = drive(driver, url, Path(args.out), count=args.count, top_k=args.top_k, seed=args.seed,
                     name=args.name)
    if args.json:
        print(json.dumps(seen, indent=2, ensure_ascii=False))
    else:
        print(f"{len(seen['names'])} names, {len(seen['rows'])} probability rows; screenshot {seen['screenshot']}")
    return 1 if seen["errors"] else 0


@contextmanager
def _given(url):
    yield url


if __name__ == "__main__":
    sys.exit(main())
