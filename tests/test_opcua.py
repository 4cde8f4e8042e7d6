"""Verdicts to a PLC over OPC UA: the daemon's asyncua server read by a real asyncua client over TCP on
loopback: the per-source variables follow the journal, subscriptions see the sequence rise in order,
and access control holds (anonymous only on loopback; with a user, anonymous and wrong passwords refused)."""

from __future__ import annotations

import asyncio

import pytest

from inspector.config import parse_daemon_config
from inspector.errors import ConfigError

from .daemon_helpers import DaemonProcess, free_port, train_flat_model, write_video

asyncua = pytest.importorskip("asyncua")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_flat_model(tmp_path_factory.mktemp("flat_model"))


def url(port: int) -> str:
    return f"opc.tcp://127.0.0.1:{port}/qinspector/"


async def read_source(port: int, source: str, user: tuple[str, str] | None = None) -> dict:
    client = asyncua.Client(url(port), timeout=10)
    if user:
        client.set_user(user[0])
        client.set_password(user[1])
    async with client:
        ns = await client.get_namespace_index("urn:qinspector")
        names = ["LastVerdict", "LastScore", "LastSequence", "ResultId", "ItemsDecided", "AnomalyCount",
                 "RejectedCount", "SourceUp", "LastEvidence", "CreationTime"]
        values = {name: await client.get_node(f"ns={ns};s=line1.{source}.{name}").read_value() for name in names}
        values["Model.Name"] = await client.get_node(f"ns={ns};s=line1.Model.Name").read_value()
        values["Model.Threshold"] = await client.get_node(f"ns={ns};s=line1.Model.Threshold").read_value()
        return values


async def watch_sequence(port: int, source: str, seconds: float) -> list[int]:
    seen: list[int] = []

    class Handler:
        def datachange_notification(self, node, value, data):
            seen.append(value)

    async with asyncua.Client(url(port), timeout=10) as client:
        ns = await client.get_namespace_index("urn:qinspector")
        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_data_change(client.get_node(f"ns={ns};s=line1.{source}.LastSequence"))
        await asyncio.sleep(seconds)
    return seen


def test_a_plc_reads_the_last_verdict_counts_and_model_and_sees_the_sequence_rise_in_order(model, tmp_path):
    video = tmp_path / "line.avi"
    truth = write_video(video, 120, defect_every=7, fps=50.0)
    port = free_port()
    sources = [{"name": "cam0", "kind": "camera", "uri": str(video), "realtime": True}]
    with DaemonProcess(tmp_path, model, sources, outputs={"opcua": {"port": port}}) as daemon:
        seen = asyncio.run(watch_sequence(port, "cam0", 1.5))  # while frames arrive at 50 frames/s
        daemon.wait_for(lambda s: len(daemon.journal_lines()) >= 120 and
                        asyncio.run(read_source(port, "cam0"))["ItemsDecided"] >= 120, timeout=30)
        values = asyncio.run(read_source(port, "cam0"))
        journal = daemon.journal_lines()
        assert daemon.terminate() == 0
    assert len(seen) >= 10 and seen == sorted(seen) and len(set(seen)) == len(seen)
    last = journal[-1]
    assert values["LastSequence"] == 120 == last["seq"] and values["ResultId"] == "cam0:120"
    assert values["LastVerdict"] == last["verdict"] and values["LastScore"] == pytest.approx(last["score"], rel=1e-5)
    assert values["ItemsDecided"] == 120 and values["AnomalyCount"] == len(truth) and values["RejectedCount"] == 0
    assert values["SourceUp"] is False  # the video file has ended
    assert values["Model.Name"] == "flat" and values["Model.Threshold"] > 0
    assert values["CreationTime"].timestamp() == pytest.approx(last["captured_at"], abs=1e-3)


def test_with_a_user_configured_anonymous_and_wrong_passwords_are_refused(model, tmp_path):
    video = tmp_path / "line.avi"
    write_video(video, 10)
    secret = tmp_path / "opcua.password"
    secret.write_text("plc-Secret-1\n")
    port = free_port()
    sources = [{"name": "cam0", "kind": "camera", "uri": str(video), "realtime": False}]
    auth = {"username": "plc", "password_file": str(secret)}
    with DaemonProcess(tmp_path, model, sources, outputs={"opcua": {"port": port, "auth": auth}}) as daemon:
        daemon.wait_for(lambda s: len(daemon.journal_lines()) >= 10)
        assert asyncio.run(read_source(port, "cam0", ("plc", "plc-Secret-1")))["ItemsDecided"] == 10
        for user in (None, ("plc", "wrong"), ("intruder", "plc-Secret-1")):
            with pytest.raises(Exception) as refused:
                asyncio.run(read_source(port, "cam0", user))
            assert "Bad" in str(refused.value) or "Identity" in type(refused.value).__name__, refused.value
        assert daemon.terminate() == 0
    assert "plc-Secret-1" not in daemon.log()


def test_an_opcua_server_outside_loopback_needs_a_user(tmp_path):
    raw = {"model": {"path": "m.onnx"}, "sources": [{"name": "a", "kind": "folder", "path": "."}],
           "outputs": {"opcua": {"host": "0.0.0.0"}}}
    with pytest.raises(ConfigError, match="anonymous access is refused"):
        parse_daemon_config(raw, "line.yaml", check_files=False)
    raw["outputs"]["opcua"]["auth"] = {"username": "plc", "password_env": "PLC_PASSWORD"}
    assert parse_daemon_config(raw, "line.yaml", check_files=False).outputs.opcua.auth.username == "plc"
