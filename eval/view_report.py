"""A report page (`solver view`) measured and photographed: the time to write it and its
size, then a screenshot in headless chromium (Debian's chromium and chromedriver, as the
tests use), the most doubtful wrong row opened.

    python eval/view_report.py TRACE --out eval/results/view/graph-test.html --png eval/results/view/graph-test.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--png", type=Path, required=True)
    a = ap.parse_args()
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "solver.cli", "view", str(a.trace), "--out", str(a.out)],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr.strip())
    print(r.stdout.strip())
    print(f"solver view: {time.perf_counter() - start:.1f} s with start-up; {a.out.stat().st_size / 1e6:.2f} MB")

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2200"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        start = time.perf_counter()
        d.get(a.out.resolve().as_uri())
        print(f"opened in chromium in {time.perf_counter() - start:.2f} s; "
              f"{d.find_element(By.ID, 'shown').text}; {len(d.find_elements(By.CSS_SELECTOR, '.plots svg'))} plots")
        Select(d.find_element(By.ID, "right")).select_by_value("wrong")
        print(f"wrong only: {d.find_element(By.ID, 'shown').text}")
        d.find_elements(By.CSS_SELECTOR, "#rows tr.row")[0].click()
        a.png.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(a.png))
    finally:
        d.quit()
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
