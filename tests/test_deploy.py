"""deploy/ as shipped: promtool checks and rule unit tests, a real Prometheus scraping a real daemon
with the shipped rules, the Grafana dashboard's queries, the systemd unit, and what can be checked of
the container files without a container engine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from inspector.config import DaemonConfig, parse_daemon_config
from inspector.scorer import Scorer

from .brokers import RedisServer
from .daemon_helpers import DaemonProcess, PageClient, free_port, train_flat_model, write_video

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} not installed (apt-get install prometheus provides prometheus and promtool)")
    return path


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "rules.yml"],
                                  ["test", "rules", "rules_test.yml"]])
def test_promtool_accepts_the_shipped_config_and_rules(args):
    result = subprocess.run([need("promtool"), *args], cwd=PROM, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rule_unit_tests_cover_every_alert():
    alerts = {r["alert"] for g in yaml.safe_load((PROM / "rules.yml").read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "rules_test.yml").read_text())["tests"]
    fired = {t["alertname"] for test in tests for t in test["alert_rule_test"] if t["exp_alerts"]}
    silent = {t["alertname"] for test in tests for t in test["alert_rule_test"] if not t["exp_alerts"]}
    assert alerts == fired == silent


def test_systemd_unit_verifies():
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not available on this machine")
    inspector = Path(sys.executable).parent / "inspector"
    unit = (DEPLOY / "systemd" / "inspector.service").read_text()
    assert "ExecStart=/opt/inspector/bin/inspector run -c /etc/inspector/line.yaml" in unit
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "User=inspector", "Restart=on-failure"):
        assert setting in unit
    # Verify with the executable of this installation in place of the documented install path.
    local = Path("/tmp") / "inspector-verify.service"
    local.write_text(unit.replace("/opt/inspector/bin/inspector", str(inspector)))
    result = subprocess.run([tool, "verify", str(local)], capture_output=True, text=True, timeout=60)
    complaints = [l for l in (result.stdout + result.stderr).splitlines() if "inspector-verify" in l]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_container_and_compose_files_agree_with_the_inspector_defaults():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    runtime = dockerfile.split("FROM runtime AS train")[0]
    runtime_steps = [l for l in runtime.splitlines() if not l.startswith("#")]
    assert not any("torch" in l or "[train]" in l for l in runtime_steps)
    assert 'RUN pip install ".[plant,scale]" ' in runtime  # the line outputs and stream source, torch-free
    assert re.search(r"^USER inspector$", runtime, re.M)
    assert "127.0.0.1:9108/healthz" in runtime and "EXPOSE 9108" in runtime
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (DEPLOY / host).exists(), host
    assert "9108:9108" in compose["services"]["inspector"]["ports"]
    container_config = parse_daemon_config(yaml.safe_load((DEPLOY / "inspector" / "line.yaml").read_text()),
                                           "line.yaml", check_files=False)
    assert container_config.metrics.port == DaemonConfig.model_fields["metrics"].default.port == 9108
    assert container_config.metrics.host == "0.0.0.0"  # reachable from the Prometheus container
    assert DaemonConfig.model_fields["metrics"].default.host == "127.0.0.1"  # bare metal: loopback unless configured
    targets = yaml.safe_load((PROM / "targets" / "inspectors.yml").read_text())
    assert targets[0]["targets"] == ["inspector:9108"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/inspector.yml").read_text())
    mounted = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert (DEPLOY / mounted[provider["providers"][0]["options"]["path"]] / "inspector.json").is_file()


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "inspector.json").read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"instance", "source"}
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def concrete(expr: str) -> str:
    return expr.replace("$instance", ".*").replace("$source", ".*").replace("$__rate_interval", "1m")


def query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_real_prometheus_scrapes_the_daemon_fires_the_anomaly_alert_and_answers_every_query(tmp_path_factory):
    prometheus = need("prometheus")
    work = tmp_path_factory.mktemp("prom_e2e")
    model = train_flat_model(work / "model")
    video = work / "line.avi"
    write_video(video, 60, defect_every=3, fps=60.0)  # a third of the parts are defective
    inbox = work / "inbox"
    inbox.mkdir()
    (inbox / "broken.png").write_text("not an image")
    redis = RedisServer(work / "redis").start()  # a stream source, so the stream panels have data
    subprocess.run([sys.executable, "-m", "inspector.cli", "publish", redis.url, "frames", "--video", str(video),
                    "--limit", "10"], check=True, capture_output=True)
    sources = [{"name": "line1", "kind": "camera", "uri": str(video), "realtime": True, "loop": True},
               {"name": "inbox", "kind": "folder", "path": str(inbox), "incomplete_grace_s": 0},
               {"name": "frames", "kind": "redis_stream", "url": redis.url, "stream": "frames", "payload": "frames",
                "field": "image"}]
    outputs = {"mqtt": {"port": free_port(), "drain_timeout_s": 0}}  # no broker there: the output panel shows it down
    review_port = free_port()  # the review page and a shadow candidate, so their panels have data
    daemon = DaemonProcess(work, model, sources, outputs=outputs, review={"port": review_port},
                           shadow={"model": str(model)}).start()
    prom_port = free_port()
    config_dir = work / "prometheus"
    (config_dir / "targets").mkdir(parents=True)
    rules = (PROM / "rules.yml").read_text()
    (config_dir / "rules.yml").write_text(re.sub(r"for: \d+m", "for: 2s", rules))  # shortened only in this copy
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("alerting")
    config["scrape_configs"] = [c for c in config["scrape_configs"] if c["job_name"] == "inspector"]
    (config_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    (config_dir / "targets" / "test.yml").write_text(yaml.safe_dump([{"targets": [f"127.0.0.1:{daemon.port}"]}]))
    server = subprocess.Popen([prometheus, f"--config.file={config_dir / 'prometheus.yml'}",
                               f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        threshold = Scorer(model).threshold
        result = wait(lambda: query(prom_port, "inspector_model_threshold")["data"]["result"], 60, "first scrape")
        assert float(result[0]["value"][1]) == pytest.approx(threshold)
        scored = wait(lambda: query(prom_port, 'sum(inspector_items_scored_total{source="line1"})')["data"]["result"], 30, "items")
        assert float(scored[0]["value"][1]) > 0
        rejected = query(prom_port, 'inspector_items_rejected_total{source="inbox", reason="decode_failed"}')["data"]["result"]
        assert float(rejected[0]["value"][1]) == 1

        def firing():
            alerts = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/alerts", timeout=10).read())
            return [a for a in alerts["data"]["alerts"]
                    if a["labels"]["alertname"] == "InspectorHighAnomalyRate" and a["state"] == "firing"]
        alert = wait(firing, 90, "InspectorHighAnomalyRate to fire")
        assert alert[0]["labels"]["source"] == "line1"

        page = PageClient(f"http://127.0.0.1:{review_port}")
        token = page.csrf()
        anomalies = wait(lambda: re.findall(r'id="item-(\d+)" class="card anomaly', page.request("/")[2])[:2], 30,
                         "anomalies on the review page")
        for item_id, label in zip(anomalies, ("defect", "false_alarm")):
            assert page.request(f"/items/{item_id}/review", {"label": label}, {"X-CSRF-Token": token})[0] == 200
        wait(lambda: query(prom_port, "inspector_review_precision")["data"]["result"], 30, "the precision gauge")

        for expr in dashboard_queries():
            answer = query(prom_port, concrete(expr))
            assert answer["status"] == "success", expr
            assert answer["data"]["result"], f"no data for dashboard query {expr}"
        for group in yaml.safe_load(rules)["groups"]:
            for rule in group["rules"]:
                answer = query(prom_port, rule["expr"])
                assert answer["status"] == "success", rule["expr"]
                if "record" in rule:
                    assert answer["data"]["result"], f"no data for recording rule {rule['record']}"
    finally:
        server.terminate()
        server.wait(30)
        assert daemon.terminate() == 0
        redis.stop()
