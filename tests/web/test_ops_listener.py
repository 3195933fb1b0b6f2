"""Issue 9, finding 7: readiness and metrics (users per shard, pool size, login failure rates, actor names)
are not served on the public API listener, only on the operations listener (WALLET_OPS_HTTP, loopback by
default); liveness stays on both."""

from __future__ import annotations

import pytest
import requests

from core.config import Config
from core.errors import ConfigError
from core.ports import free_port
from tests.conftest import make_config
from tests.web.conftest import start_api
from tests.process.support import ServeProcess, prepare, wallet_env


def test_the_api_listener_serves_liveness_only(any_api):
    assert any_api.client.get("/healthz").json == {"status": "ok"}
    for path in ("/readyz", "/metrics"):
        answer = any_api.client.get(path)
        assert (answer.status_code, answer.json["code"]) == (404, "not_found"), path
    assert any_api.ops.get("/healthz").json == {"status": "ok"}
    assert any_api.ops.get("/readyz").json["status"] == "ready"
    assert "wallet_shard_up" in any_api.ops.get("/metrics").get_data(as_text=True)
    paths = any_api.client.get("/api/v1/openapi.json").json["paths"]
    assert "/readyz" not in paths and "/metrics" not in paths


def test_the_ops_address_is_configured_apart_from_the_api():
    assert Config().ops_http == "127.0.0.1:8001"
    assert Config.from_env({"WALLET_OPS_HTTP": "127.0.0.1:9101"}).ops_host_port == ("127.0.0.1", 9101)
    with pytest.raises(ConfigError, match="WALLET_OPS_HTTP must differ"):
        Config.from_env({"WALLET_HTTP": "127.0.0.1:9000", "WALLET_OPS_HTTP": "127.0.0.1:9000"})
    with pytest.raises(ConfigError, match="WALLET_OPS_HTTP must be host:port"):
        Config.from_env({"WALLET_OPS_HTTP": "nowhere"})
    # The idle timeout of the API listener (findings 1-2) is configured and bounded the same way.
    assert Config.from_env({"WALLET_HTTP_IDLE_TIMEOUT_S": "3"}).http_idle_timeout_s == 3
    for bad in ("0", "301", "ten"):
        with pytest.raises(ConfigError, match="WALLET_HTTP_IDLE_TIMEOUT_S"):
            Config.from_env({"WALLET_HTTP_IDLE_TIMEOUT_S": bad})


def test_wallet_serve_has_two_listeners(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    prepare(config, {})
    server = ServeProcess(wallet_env(config, free_port()), tmp_path / "serve.log")
    try:
        server.start()
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 404
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 404
        ready = requests.get(server.ops_url + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        metrics = requests.get(server.ops_url + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "wallet_shard_up" in metrics.text
        assert "Werkzeug" not in metrics.headers.get("Server", "")
        assert server.terminate() == 0
    finally:
        server.ensure_stopped()


def test_etcd_settings_are_ignored_by_a_single_process(tmp_path):
    """Role all has no membership: an etcd URL in its environment changes nothing, and /readyz neither warns
    about etcd nor shows a cluster map."""
    config = make_config(f"sqlite:///{tmp_path / 'wallet.sqlite3'}", etcd_url=f"http://127.0.0.1:{free_port()}")
    system, api = start_api(config)
    try:
        ready = api.ops.get("/readyz").json
        assert ready["status"] == "ready" and ready.get("cluster") is None
        assert not any("etcd" in warning for warning in ready["warnings"])
    finally:
        system.stop()
