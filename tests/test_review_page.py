"""The review page over real HTTP (uvicorn on a loopback port): reviews, CSRF, login, evidence, headers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from inspector.review.app import Promotion, ReviewPage
from inspector.review.security import add_user
from inspector.review.server import ReviewServer
from inspector.review.store import NewItem, ReviewStore
from tests.daemon_helpers import PageClient as Client


def item(seq: int, source: str = "cam0", evidence: str | None = None) -> NewItem:
    return NewItem("run-a", source, seq, f"frame {seq}", 1_700_000_000 + seq, "v1", 3.0, 1.5, 2.0, "anomaly", evidence)


@pytest.fixture
def served(tmp_path):
    """A review page on a free loopback port over a store with three items and one evidence picture."""
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / "cam0_00000001.png").write_bytes(b"\x89PNG fake picture")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG outside the evidence folder")
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([item(1, evidence="cam0_00000001.png"), item(2), item(3, source="<script>alert(1)</script>")])
    servers = []

    def start(**options) -> tuple[Client, ReviewStore, list]:
        reviewed = []
        page = ReviewPage(store, evidence, on_review=lambda it, label: reviewed.append((it["id"], label)), **options)
        server = ReviewServer(page.app(), "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return Client(server.url), store, reviewed

    yield start
    for server in servers:
        server.stop()


def test_a_review_with_the_session_csrf_token_is_stored_and_reported(served):
    client, store, reviewed = served()
    token = client.csrf()
    status, _, body = client.request("/items/1/review", {"label": "false_alarm", "note": "glare", "reviewer": "ana"},
                                     {"X-CSRF-Token": token})
    assert status == 200 and "false alarm" in body and "by ana: glare" in body
    assert store.item(1)["label"] == "false_alarm" and reviewed == [(1, "false_alarm")]


@pytest.mark.parametrize("headers", [{}, {"X-CSRF-Token": "forged"}], ids=["no token", "wrong token"])
def test_a_state_change_without_the_right_csrf_token_is_refused(served, headers):
    client, store, reviewed = served()
    client.csrf()  # has a session, but does not send its token back
    status, _, body = client.request("/items/1/review", {"label": "defect"}, headers)
    assert status == 403 and "CSRF" in body
    assert store.item(1)["label"] is None and reviewed == []


def test_another_sessions_token_does_not_work(served):
    client, store, _ = served()
    other = Client(client.base)
    status, _, _ = client.request("/items/1/review", {"label": "defect"}, {"X-CSRF-Token": other.csrf()})
    assert status == 403 and store.item(1)["label"] is None


def test_a_cross_origin_post_is_refused_even_with_a_token(served):
    client, store, _ = served()
    token = client.csrf()
    status, _, body = client.request("/items/1/review", {"label": "defect"},
                                     {"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in body and store.item(1)["label"] is None


def test_bad_input_is_one_clear_line(served):
    client, _, _ = served()
    token = client.csrf()
    assert client.request("/items/1/review", {"label": "maybe"}, {"X-CSRF-Token": token})[:3:2] == (400, "label: one of defect, false_alarm, unsure\n")
    assert client.request("/items/99/review", {"label": "defect"}, {"X-CSRF-Token": token})[0] == 404
    assert client.request("/?verdict=broken")[:3:2] == (400, "verdict: one of anomaly, normal\n")
    assert client.request("/?since=yesterday")[0] == 400


def test_names_from_the_line_are_escaped_and_every_response_has_security_headers(served):
    client, _, _ = served()
    status, headers, body = client.request("/")
    assert status == 200
    assert "<script>alert(1)</script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "script-src 'self'" in headers["content-security-policy"] and "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


@pytest.mark.parametrize("path", ["/evidence/..%2Fsecret.png", "/evidence/%2E%2E%2Fsecret.png", "/evidence/.hidden.png",
                                  "/evidence/..%5Csecret.png", "/evidence/cam0_00000001.txt", "/evidence/missing.png",
                                  "/evidence/%2Fetc%2Fpasswd"])
def test_evidence_is_served_only_from_the_evidence_folder(served, path):
    client, _, _ = served()
    status, _, body = client.request(path)
    assert status == 404 and "outside" not in body


def test_an_evidence_picture_is_served_as_png(served):
    client, _, _ = served()
    status, headers, body = client.request("/evidence/cam0_00000001.png")
    assert status == 200 and headers["content-type"] == "image/png"


def test_newer_items_arrive_after_the_newest_shown_and_nothing_new_is_204(served):
    client, store, _ = served()
    assert client.request("/items/newer?after=3")[0] == 204
    store.add_items([item(4), item(5)])
    status, _, body = client.request("/items/newer?after=3")
    assert status == 200 and body.index('id="item-5"') < body.index('id="item-4"')
    assert 'hx-get="/items/newer?after=5"' in body  # the poller moves on


def test_older_pages_follow_the_last_item_shown(served):
    client, store, _ = served(page_size=5)
    store.add_items([item(seq) for seq in range(4, 13)])
    _, _, first = client.request("/")
    assert re.findall(r'id="item-(\d+)"', first) == ["12", "11", "10", "9", "8"]
    older = re.search(r'hx-get="(/items\?before=\d+)"', first).group(1)
    _, _, second = client.request(older)
    assert re.findall(r'id="item-(\d+)"', second) == ["7", "6", "5", "4", "3"]


@pytest.fixture
def users(tmp_path) -> Path:
    path = tmp_path / "users"
    add_user(path, "ana", "correct horse battery")
    return path


def test_with_a_users_file_nothing_is_shown_or_changed_before_login(served, users):
    client, store, _ = served(users_file=users)
    status, headers, _ = client.request("/")
    assert status == 303 and headers["location"] == "/login"
    for path in ("/items?before=3", "/items/newer?after=0", "/counts", "/evidence/cam0_00000001.png"):
        assert client.request(path)[0] == 401, path
    token = client.csrf("/login")
    assert client.request("/items/1/review", {"label": "defect"}, {"X-CSRF-Token": token})[0] == 401
    assert store.item(1)["label"] is None


def test_a_login_names_the_reviewer_and_issues_a_new_session(served, users):
    client, store, _ = served(users_file=users)
    token = client.csrf("/login")
    before = {c.value for c in client.cookies}
    status, headers, _ = client.request("/login", {"username": "ana", "password": "correct horse battery",
                                                   "csrf_token": token})
    assert status == 303 and headers["location"] == "/"
    assert {c.value for c in client.cookies}.isdisjoint(before)  # no session fixation
    token = client.csrf()
    status, _, body = client.request("/items/2/review", {"label": "defect", "reviewer": "mallory"}, {"X-CSRF-Token": token})
    assert status == 200 and "by ana" in body and "mallory" not in body


def test_wrong_passwords_are_refused_and_then_throttled(served, users):
    client, _, _ = served(users_file=users)
    token = client.csrf("/login")
    for _ in range(5):
        status, _, body = client.request("/login", {"username": "ana", "password": "wrong", "csrf_token": token})
        assert status == 401 and "wrong user name or password" in body
    status, _, _ = client.request("/login", {"username": "ana", "password": "correct horse battery", "csrf_token": token})
    assert status == 429


def test_a_login_without_the_csrf_token_is_refused(served, users):
    client, _, _ = served(users_file=users)
    client.csrf("/login")
    assert client.request("/login", {"username": "ana", "password": "correct horse battery"})[0] == 403


def test_the_users_file_holds_salted_hashes_never_the_password(users):
    text = users.read_text()
    assert "correct horse battery" not in text and text.startswith("ana:scrypt$")
    add_user(users, "ben", "correct horse battery")
    hashes = [line.split(":", 1)[1] for line in users.read_text().splitlines()]
    assert len(set(hashes)) == 2  # same password, different salt
    assert users.stat().st_mode & 0o077 == 0


def test_the_page_off_loopback_without_a_users_file_refuses_to_start(tmp_path):
    from inspector.config import parse_daemon_config
    from inspector.errors import ConfigError

    (tmp_path / "m.onnx").write_bytes(b"")
    raw = {"model": {"path": "m.onnx"}, "sources": [{"name": "in", "kind": "folder", "path": "."}],
           "review": {"host": "0.0.0.0"}}
    with pytest.raises(ConfigError, match=r"field 'review'.*needs users_file"):
        parse_daemon_config(raw, "line.yaml", base=tmp_path)
    raw["review"]["users_file"] = "users"
    with pytest.raises(ConfigError, match=r"field 'review.users_file': users file .* does not exist"):
        parse_daemon_config(raw, "line.yaml", base=tmp_path)
    add_user(tmp_path / "users", "ana", "correct horse battery")
    config = parse_daemon_config(raw, "line.yaml", base=tmp_path)
    assert config.review.database == tmp_path / "journal" / "reviews.sqlite3"  # beside the journal


def test_reviews_export_writes_every_review_with_its_item_as_csv_and_json_lines(tmp_path):
    import csv
    import json
    import subprocess
    import sys

    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([item(1), item(2)])
    store.add_review(1, "defect", "ana")
    store.add_review(1, "false_alarm", "ben", note='a "quoted", note')
    store.close()
    run = [sys.executable, "-m", "inspector.cli", "reviews", "export", str(tmp_path / "reviews.sqlite3")]
    lines = subprocess.run(run, capture_output=True, text=True, check=True).stdout.splitlines()
    assert [(json.loads(l)["label"], json.loads(l)["seq"]) for l in lines] == [("defect", 1), ("false_alarm", 1)]
    result = subprocess.run(run + ["--format", "csv", "--out", str(tmp_path / "r.csv")], capture_output=True, text=True)
    assert result.returncode == 0 and "2 review(s) exported" in result.stderr
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(r["reviewer"], r["note"], r["model_version"]) for r in rows] == [("ana", "", "v1"), ("ben", 'a "quoted", note', "v1")]
    missing = subprocess.run(run[:-1] + [str(tmp_path / "nope.sqlite3")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no review database there" in missing.stderr


def test_add_user_reads_the_password_from_standard_input(tmp_path):
    import subprocess
    import sys

    from inspector.review.security import check_password, read_users

    command = [sys.executable, "-m", "inspector.cli", "reviews", "add-user", str(tmp_path / "users"), "ana"]
    result = subprocess.run(command, input="correct horse battery\n", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert check_password("correct horse battery", read_users(tmp_path / "users")["ana"])
    short = subprocess.run(command, input="short\n", capture_output=True, text=True)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_polls_and_reads_without_a_session_do_not_pile_up_sessions(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([item(1)])
    page = ReviewPage(store, tmp_path)
    server = ReviewServer(page.app(), "127.0.0.1", 0)
    server.start()
    try:
        for _ in range(50):  # a page left open across a restart polls with a cookie nobody knows
            status, _, _ = Client(server.url).request("/items/newer?after=1", headers={"Cookie": "qi_review_session=gone"})
            assert status == 204
        assert len(page.sessions._sessions) == 0
        Client(server.url).request("/")  # opening the page starts one
        assert len(page.sessions._sessions) == 1
    finally:
        server.stop()


def test_an_oversized_form_is_refused_before_it_is_read(served):
    client, store, _ = served()
    token = client.csrf()
    status, _, body = client.request("/items/1/review", {"label": "defect", "note": "x" * 20_000}, {"X-CSRF-Token": token})
    assert status == 413 and store.item(1)["label"] is None


def test_the_server_socket_asks_for_tcp_nodelay(tmp_path):
    """Without it a kept-alive connection waits ~40 ms per response for the client's delayed ACK."""
    import socket

    server = ReviewServer(ReviewPage(ReviewStore(tmp_path / "r.sqlite3"), tmp_path).app(), "127.0.0.1", 0)
    try:
        assert server.socket.proto == socket.IPPROTO_TCP  # asyncio then sets TCP_NODELAY on every connection
        assert server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        server.socket.close()


def test_a_reviewed_frame_survives_evidence_retention_for_retraining(tmp_path):
    from training.retrain import reviewed_frames

    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / "cam0_00000001.frame.png").write_bytes(b"\x89PNG the frame as captured")
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.set_evidence_dir(evidence)
    store.add_items([NewItem("run-a", "cam0", 1, "frame 1", 1.0, "v1", 3.0, 1.5, 2.0, "anomaly",
                             "cam0_00000001.png", "cam0_00000001.frame.png")])
    server = ReviewServer(ReviewPage(store, evidence).app(), "127.0.0.1", 0)
    server.start()
    try:
        client = Client(server.url)
        assert client.request("/items/1/review", {"label": "false_alarm"}, {"X-CSRF-Token": client.csrf()})[0] == 200
    finally:
        server.stop()
    (evidence / "cam0_00000001.frame.png").unlink()  # retention deletes the oldest evidence files
    paths, ids, missing = reviewed_frames(tmp_path / "reviews.sqlite3", "false_alarm")
    assert paths == [evidence / "reviewed" / "cam0_00000001.frame.png"] and ids == [1] and missing == 0
    assert paths[0].read_bytes() == b"\x89PNG the frame as captured"


def _logged_in(client: Client) -> str:
    """Log in as ana; returns the new session's CSRF token."""
    token = client.csrf("/login")
    assert client.request("/login", {"username": "ana", "password": "correct horse battery", "csrf_token": token})[0] == 303
    return client.csrf()


@pytest.fixture
def promotion(tiny_piped_run, tmp_path) -> Promotion:
    """A shadow candidate (a real exported model) and an active model file it would replace."""
    from inspector.scorer import Scorer

    candidate = tmp_path / "candidate.onnx"
    shutil.copyfile(tiny_piped_run.model_path, candidate)
    active = tmp_path / "line" / "model.onnx"
    active.parent.mkdir()
    active.write_bytes(b"the active model")
    return Promotion(candidate, Scorer(candidate).card.version, active, tmp_path / "reviews.sqlite3")


def test_a_logged_in_user_promotes_the_shadow_candidate_with_the_page_button(served, users, promotion):
    client, _, _ = served(users_file=users, promotion=promotion)
    token = _logged_in(client)
    _, _, page = client.request("/")
    assert 'id="promote"' in page and promotion.candidate_version in page

    status, _, body = client.request("/promote", {}, {"X-CSRF-Token": token})

    assert status == 200 and "ana promoted candidate.onnx" in body
    assert promotion.active.read_bytes() == promotion.candidate.read_bytes()
    assert (promotion.active.parent / "model.previous.onnx").read_bytes() == b"the active model"

    status, _, body = client.request("/promote", {}, {"X-CSRF-Token": token})  # pressed again
    assert status == 409 and "already the active model" in body
    assert (promotion.active.parent / "model.previous.onnx").read_bytes() == b"the active model"  # undo kept


def test_promoting_from_the_page_needs_a_login_its_token_and_a_candidate(served, users, promotion):
    open_page, _, _ = served(promotion=promotion)  # loopback, no users file: labels yes, promotion no
    token = open_page.csrf()
    assert 'id="promote"' not in open_page.request("/")[2]
    status, _, body = open_page.request("/promote", {}, {"X-CSRF-Token": token})
    assert status == 403 and "needs a login" in body and "inspector promote" in body

    guarded, _, _ = served(users_file=users, promotion=promotion)
    assert guarded.request("/promote", {}, {"X-CSRF-Token": guarded.csrf("/login")})[0] == 401
    _logged_in(guarded)
    assert guarded.request("/promote", {})[0] == 403  # no CSRF token
    assert promotion.active.read_bytes() == b"the active model"

    without, _, _ = served(users_file=users)
    assert without.request("/promote", {}, {"X-CSRF-Token": _logged_in(without)})[0] == 404
