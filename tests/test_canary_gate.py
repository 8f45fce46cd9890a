"""The canary gate's verdict and the canary commands' refusals, without a fleet (test_fleet runs them on one)."""

import pytest

from training.serving import canary
from training.serving.canary import Figures, Gate
from training.serving.errors import NotRunningError

GATE = Gate(min_requests=20, max_error_increase=0.02, max_p99_ratio=2.0, p99_slack_ms=10, max_novelty_increase=0.1)
SERVING = Figures(requests=1000, error_ratio=0.01, p99_ms=20.0, novel_share=0.05)


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        (Figures(100, 0.02, 25.0, 0.06), None),  # within every threshold
        (Figures(100, 0.05, 25.0, 0.06), "error ratio 5.0% against the serving version's 1.0%"),
        (Figures(100, 0.01, 51.0, 0.06), "p99 handler time 51.0 ms against the serving version's 20.0 ms"),
        (Figures(100, 0.01, 49.0, 0.06), None),  # under 2 x 20 + 10 ms
        (Figures(100, 0.01, 25.0, 0.20), "novel inputs 20.0% against the serving version's 5.0%"),
        (Figures(19, 0.50, 500.0, 0.90), None),  # too few requests to judge
    ],
)
def test_the_gate_aborts_a_canary_worse_than_the_serving_version_and_only_then(figures, reason):
    assert canary.verdict(figures, SERVING, GATE) == reason


def test_a_canary_of_no_fleet_or_of_no_running_canary_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(canary.CanaryError, match="PERCENT must be 1..99"):
        canary.start("nw-sine", 0, run_dir=tmp_path)
    with pytest.raises(canary.CanaryError, match="no canary of nw-sine is running: `make canary NAME=nw-sine"):
        canary.abort("nw-sine", run_dir=tmp_path)
    with pytest.raises(canary.CanaryError, match="no canary of nw-sine is running"):
        canary.promote("nw-sine", run_dir=tmp_path)
    with pytest.raises(NotRunningError, match="make serve REPLICAS=2"):
        canary.start("nw-sine", 10, run_dir=tmp_path)
