"""`make monitor`'s parts that need no server: the rules Prometheus loads, the scrape configuration, the token
the keeper hands Prometheus, and the errors of a monitor started too early."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from training.serving import monitor
from training.serving.errors import NotRunningError
from training.serving.torchserve import Server


def test_the_alert_rules_are_valid_prometheus_rules_and_query_declared_metrics():
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Prometheus: `make prometheus` installs it"
    done = subprocess.run([promtool, "check", "rules", str(monitor.ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = yaml.safe_load(monitor.ALERTS.with_name("metrics.yaml").read_text())
    declared = {
        m["name"] for section in metrics.values() if isinstance(section, dict) for ms in section.values() for m in ms
    }
    for group in yaml.safe_load(monitor.ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            used = {name for name in declared if name in rule["expr"]}
            assert used, f"{rule['alert']} queries no metric TorchServe exports"


def test_the_scrape_configuration_reads_the_token_from_a_file_never_inline():
    config = monitor.scrape_config("http://127.0.0.1:8082", "15s")
    (job,) = config["scrape_configs"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": monitor.TOKEN_FILE}
    assert job["static_configs"] == [{"targets": ["127.0.0.1:8082"]}] and job["scheme"] == "http"
    assert config["rule_files"] == [monitor.ALERTS.name]


class ExpiringServer(Server):
    def __init__(self, tokens: list[str], expired: bool):
        self.tokens, self.expired, self.refreshed = tokens, expired, 0

    def token(self, kind="inference"):
        return self.tokens[-1]

    def token_expired(self, kind="inference"):
        return self.expired

    def refresh_token(self, kind="inference"):
        self.refreshed += 1
        self.tokens.append(f"fresh-{self.refreshed}")
        self.expired = False
        return self.tokens[-1]


def test_the_keeper_hands_prometheus_the_current_token_and_refreshes_it_once_expired(tmp_path):
    token_file = tmp_path / monitor.TOKEN_FILE
    server = ExpiringServer(["first"], expired=False)
    monitor.keep_token(server, token_file)
    assert token_file.read_text() == "first" and token_file.stat().st_mode & 0o777 == 0o600
    server.tokens.append("someone-refreshed")  # `python -m training token --refresh` elsewhere
    monitor.keep_token(server, token_file)
    assert token_file.read_text() == "someone-refreshed" and server.refreshed == 0
    server.expired = True
    monitor.keep_token(server, token_file)
    assert token_file.read_text() == "fresh-1" and server.refreshed == 1


def test_a_monitor_needs_a_running_server(tmp_path):
    with pytest.raises(NotRunningError) as error:
        monitor.start(run_dir=tmp_path / "no-server", monitor_dir=tmp_path / "monitor")
    assert "make serve" in str(error.value)
    assert not monitor.stop(tmp_path / "monitor")
    assert not Path(tmp_path / "monitor" / monitor.PID_FILE).exists()
