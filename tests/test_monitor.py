"""`make monitor`'s parts that need no server: the rules Prometheus loads, the scrape configuration, the password
Prometheus wants, and the errors of a monitor started too early."""

import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest
import yaml

from training.serving import monitor
from training.serving.errors import NotRunningError


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
            if "haproxy_" in rule["expr"]:  # HAProxy's exporter: test_fleet checks its names on a real balancer
                continue
            used = {name for name in declared if name in rule["expr"]}
            assert used, f"{rule['alert']} queries no metric TorchServe exports"


def test_the_scrape_configuration_names_the_metrics_address_and_the_rules():
    config = monitor.scrape_config({"": "http://127.0.0.1:8082"}, "15s")
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:8082"]}]
    assert config["rule_files"] == [monitor.ALERTS.name] and "scheme" not in job and "tls_config" not in job


def test_a_fleet_is_scraped_replica_by_replica_and_at_its_balancer():
    urls = {"r1": "http://127.0.0.1:18082", "r2": "https://10.0.0.2:28082"}
    config = monitor.scrape_config(urls, "15s", "127.0.0.1:8082", Path("/fleet/tls/ca.crt"))
    torchserve, balancer = config["scrape_configs"]
    assert torchserve["static_configs"] == [
        {"targets": ["127.0.0.1:18082"], "labels": {"replica": "r1"}},
        {"targets": ["10.0.0.2:28082"], "labels": {"replica": "r2", "__scheme__": "https"}},  # off loopback: TLS
    ]
    assert torchserve["tls_config"] == {"ca_file": "/fleet/tls/ca.crt"}
    assert balancer == {"job_name": "balancer", "static_configs": [{"targets": ["127.0.0.1:8082"]}]}


def test_prometheus_wants_a_password_kept_in_a_file_of_its_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor, "scrape_targets", lambda run_dir: ({"": "http://127.0.0.1:8082"}, None, None))
    monitor.prepare(tmp_path / "monitor", tmp_path / "run", "15s")
    password = (tmp_path / "monitor" / monitor.PASSWORD_FILE).read_text()
    for name in (monitor.PASSWORD_FILE, monitor.WEB_CONFIG):
        assert (tmp_path / "monitor" / name).stat().st_mode & 0o777 == 0o600
    (hashed,) = yaml.safe_load((tmp_path / "monitor" / monitor.WEB_CONFIG).read_text())["basic_auth_users"].values()
    assert bcrypt.checkpw(password.encode(), hashed.encode()) and password not in hashed
    monitor.prepare(tmp_path / "monitor", tmp_path / "run", "15s")  # a restart keeps the password
    assert (tmp_path / "monitor" / monitor.PASSWORD_FILE).read_text() == password
    done = subprocess.run(
        ["promtool", "check", "web-config", str(tmp_path / "monitor" / monitor.WEB_CONFIG)], capture_output=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_monitor_needs_a_running_server(tmp_path):
    with pytest.raises(NotRunningError) as error:
        monitor.start(run_dir=tmp_path / "no-server", monitor_dir=tmp_path / "monitor")
    assert "make serve" in str(error.value)
    assert not monitor.stop(tmp_path / "monitor")
    assert not Path(tmp_path / "monitor" / monitor.PID_FILE).exists()
