"""The README's picture of the review page: a real daemon scores the given images, a few are labelled
over HTTP as an operator would, and Debian's chromium (Playwright) photographs the page.

    python scripts/review_page_screenshot.py MODEL IMAGE_DIR... --out docs/review_page.png

The README's picture: the demo's synthetic parts (training.synthetic.write_dataset, 64 px; the demo
config trained 300 steps), three images each of its test speck, scratch, stain and good folders. No
real data set's images go into the repository.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.servers import free_port, scrape, start_inspector  # noqa: E402
from inspector.image_files import list_images  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path, nargs="+", help="folders of images to stream through the daemon")
    parser.add_argument("--label", default="defect,defect,unsure", help="labels for the anomalies below the newest")
    parser.add_argument("--out", type=Path, default=Path("docs/review_page.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="qi_screenshot_"))
    inbox = work / "inbox"
    inbox.mkdir()
    page_port, metrics_port = free_port(), free_port()
    config = {"model": {"path": str(args.model.resolve()), "intra_op_threads": 1}, "metrics": {"port": metrics_port},
              "sources": [{"name": "line1", "kind": "folder", "path": str(inbox), "settle_s": 0.1}],
              "journal": {"path": str(work / "journal" / "decisions.jsonl")}, "evidence": {"dir": str(work / "evidence")},
              "review": {"port": page_port}, "logging": {"status_interval_s": 0}}
    daemon = start_inspector(work, config)
    try:
        files = [path for folder in args.images for path in list_images(folder)]
        for path in files:
            shutil.copyfile(path, work / f".{path.name}.part")
            (work / f".{path.name}.part").rename(inbox / f"{path.parent.name}_{path.name}")
        while sum(v for (name, _), v in scrape(metrics_port).items()
                  if name in ("inspector_items_scored_total", "inspector_items_rejected_total")) < len(files):
            time.sleep(0.5)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        base = f"http://127.0.0.1:{page_port}"
        page = opener.open(base + "/", timeout=30).read().decode()
        token = re.search(r'"X-CSRF-Token": "([^"]+)"', page).group(1)
        ids = sorted((int(i) for i in re.findall(r'id="item-(\d+)"', page)), reverse=True)[1:]  # the top one stays to review
        for item_id, label in zip(ids, args.label.split(",")):
            request = urllib.request.Request(f"{base}/items/{item_id}/review", headers={"X-CSRF-Token": token},
                                             data=urllib.parse.urlencode({"label": label, "reviewer": "ana"}).encode())
            opener.open(request, timeout=30).read()
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            view = browser.new_page(viewport={"width": 1400, "height": 1000})
            view.goto(base + "/")
            view.keyboard.press("j")
            view.wait_for_timeout(1500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            view.screenshot(path=str(args.out))
            browser.close()
    finally:
        daemon.terminate()
        daemon.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
