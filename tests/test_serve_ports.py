"""The ports `make serve` (and every test server) listens on: distinct, free, and named when they are not."""

import socket

import pytest

from training.infra.processes import free_ports
from training.serving import serve
from training.serving.errors import PortInUseError


def test_ports_asked_for_together_are_all_different_and_free():
    for _ in range(200):  # one port closed before the next is asked for is often handed out again
        ports = free_ports(5)
        assert len(set(ports)) == 5
    listeners = serve.free_ports()
    assert len(set(listeners.values())) == len(listeners) == 6  # TorchServe's five, the protocol's gRPC service


def test_one_port_for_two_listeners_is_refused_naming_both(tmp_path):
    ports = serve.free_ports()
    ports["grpc_inference_port"] = ports["metrics_address"]  # what a collision of picks gave a test server once
    _, properties = serve.resolve_config(tmp_path, tmp_path, [], ports)
    with pytest.raises(PortInUseError, match=r"given to both metrics_address and grpc_inference_port"):
        serve.check_ports_free(properties)


def test_a_busy_port_is_refused_naming_it(tmp_path):
    ports = serve.free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["management_address"]))
        squatter.listen()
        _, properties = serve.resolve_config(tmp_path, tmp_path, [], ports)
        with pytest.raises(PortInUseError, match=r"\(management_address\) is in use"):
            serve.check_ports_free(properties)
