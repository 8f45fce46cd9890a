"""The balancer's configuration, checked by HAProxy itself (`haproxy -c`) and read for what the fleet relies on."""

import re
import shutil

import pytest

from training.infra.certificates import ensure_certificates
from training.serving import balancer
from training.serving.balancer import Replica

REPLICAS = [
    Replica("r1", "127.0.0.1:18080", 1000),
    Replica("r2", "10.0.0.2:18080", 500, tls=True),
]


@pytest.fixture
def config(tmp_path):
    (tmp_path / balancer.FRONT_MAP).write_text("front-token client\n")
    (tmp_path / balancer.REPLICA_MAP).write_text("r1 one\nr2 two\n")
    (tmp_path / balancer.CANARY_MAP).write_text("nw-sine 2\n")
    (tmp_path / balancer.SHARE_MAP).write_text("nw-sine 10\n")
    ca = ensure_certificates(tmp_path / "tls", ["10.0.0.2"]).ca
    text = balancer.config_text(tmp_path, tmp_path, "127.0.0.1:18999", "127.0.0.1:18998", REPLICAS, 10, ca=ca)
    (tmp_path / balancer.CONFIG).write_text(text)
    return tmp_path / balancer.CONFIG, text


@pytest.mark.skipif(not shutil.which("haproxy"), reason="HAProxy is installed by `make install`")
def test_haproxy_accepts_the_configuration(config):
    path, _ = config
    assert balancer.subprocess_check(shutil.which("haproxy"), path) == ""


def test_a_broken_configuration_is_refused_with_haproxys_words(tmp_path):
    if not shutil.which("haproxy"):
        pytest.skip("HAProxy is installed by `make install`")
    (tmp_path / "bad.cfg").write_text("frontend x\n  bind 127.0.0.1:1\n  no-such-keyword\n")
    assert "no-such-keyword" in balancer.subprocess_check(shutil.which("haproxy"), tmp_path / "bad.cfg")


def test_each_replica_gets_its_own_token_limit_and_retries_go_elsewhere(config):
    _, text = config
    assert "balance leastconn" in text and "option redispatch 1" in text
    retry_on = re.search(r"retry-on (.*)", text).group(1).split()
    assert {"conn-failure", "empty-response", "response-timeout", "401", "502", "503", "504"} <= set(retry_on)
    assert "500" not in retry_on  # a handler's own error is not sent again
    for replica in REPLICAS:
        server = rf"server {replica.name} unix@\S+/{replica.name}\.sock check .* maxconn {replica.maxconn}"
        assert re.search(server, text)
        backend = text.split(f"\nbackend {replica.name}-replica\n")[1].split("\nfrontend")[0]
        assert f"map({balancer.REPLICA_MAP})" not in backend  # the map's full path, not a relative one
        assert f"str({replica.name}),map(" in backend and "set-status 503 if { status 507 }" in backend
    assert "ssl verify required" in text.split("\nbackend r2-replica\n")[1]  # off loopback: TLS, verified
    assert "ssl" not in text.split("\nbackend r1-replica\n")[1].split("\nfrontend")[0]


def test_no_secret_is_written_into_the_configuration(config):
    _, text = config
    for secret in ("front-token", " one", " two"):
        assert secret not in text  # tokens live in the 0600 maps, changed at run time
    assert "mode 600" in text and "level admin" in text
