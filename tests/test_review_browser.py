"""The review page in a real headless browser (Debian's chromium driven by Playwright) against a real daemon."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from inspector.review.store import ReviewStore
from tests.daemon_helpers import DaemonProcess, free_port, metric
from training.flat_parts import flat_part, train_flat_model

pytestmark = pytest.mark.slow
expect = None  # playwright's, set by the browser fixture (the module imports without playwright)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_flat_model(tmp_path_factory.mktemp("flat_model"))


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    global expect
    expect = playwright.expect
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def drop(inbox, name: str, image: np.ndarray) -> None:
    """Write a frame the way a camera's uploader does: to a temporary name, then renamed into place."""
    ok, data = cv2.imencode(".png", image)
    (inbox / f".{name}.part").write_bytes(data.tobytes())
    (inbox / f".{name}.part").rename(inbox / name)


def review_daemon(tmp_path, model, port: int) -> DaemonProcess:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.1, "poll_interval_s": 0.05}]
    return DaemonProcess(tmp_path, model, sources, review={"port": port})


def test_an_operator_reviews_new_anomalies_with_the_keyboard_and_the_labels_outlive_a_restart(model, browser, tmp_path):
    port = free_port()
    review_url = f"http://127.0.0.1:{port}/"
    daemon = review_daemon(tmp_path, model, port)
    inbox = tmp_path / "inbox"
    rng = np.random.default_rng(3)
    page = browser.new_page()
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    with daemon:
        page.goto(review_url)
        assert "nothing to review yet" in page.inner_text("main")
        drop(inbox, "part_normal.png", flat_part(rng))
        for index in range(3):
            drop(inbox, f"part_defect_{index}.png", flat_part(rng, defect=True))
        # new anomalies appear on the open page without a reload, newest first
        expect(page.locator("article.card.anomaly")).to_have_count(3, timeout=15_000)
        origins = [text.split(" ")[0] for text in page.locator("article.card .facts dd:nth-of-type(2) .hint").all_inner_texts()]
        assert origins == ["part_defect_2.png", "part_defect_1.png", "part_defect_0.png"]

        # keyboard only: a note on the first, then defect, false alarm, unsure down the list
        page.keyboard.press("j")
        page.keyboard.press("n")
        page.keyboard.type("dent near the rim")
        page.keyboard.press("Escape")
        for key in ("d", "f", "u"):
            page.keyboard.press(key)
        expect(page.locator("article.card.labelled")).to_have_count(3, timeout=10_000)
        labels = page.locator("article.card .label").all_inner_texts()
        assert [text.split(" by ")[0] for text in labels] == ["defect", "false alarm", "unsure"]
        assert "dent near the rim" in labels[0]
        samples = daemon.wait_for(lambda s: metric(s, "inspector_reviews_total", source="inbox", label="unsure") == 1)
        assert metric(samples, "inspector_reviews_total", source="inbox", label="defect") == 1
        assert metric(samples, "inspector_reviews_total", source="inbox", label="false_alarm") == 1
        assert metric(samples, "inspector_review_precision", source="inbox") == pytest.approx(0.5)
        assert errors == []  # no script errors, no CSP violations, no failed requests
        assert daemon.terminate() == 0
    store = ReviewStore(tmp_path / "journal" / "reviews.sqlite3")
    assert store.evidence_dir() == daemon.evidence.resolve()
    for offered in store.items():  # each keeps its frame as captured, out of retention's way once reviewed
        frame = cv2.imread(str(daemon.evidence / offered["frame"]))
        assert frame.shape == (48, 64, 3)
        assert offered["frame"] == "reviewed/" + offered["evidence"].replace(".png", ".frame.png")
    store.close()

    with review_daemon(tmp_path, model, port) as restarted:
        # the open page's session ended with the daemon: a label is refused, and the page says why
        page.keyboard.press("d")
        expect(page.locator("#notice")).to_contain_text("reload the page", timeout=10_000)
        page.reload()  # (the page's polls failed while no daemon ran: expected, and not counted)
        errors.clear()
        labels = page.locator("article.card .label").all_inner_texts()
        assert [text.split(" by ")[0] for text in labels] == ["defect", "false alarm", "unsure"]
        assert "by operator: dent near the rim" in labels[0]
        assert restarted.terminate() == 0
    assert errors == []  # no script errors, no CSP violations
