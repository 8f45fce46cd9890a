"""`handlers/numbers.py`: the range check without a tensor agrees with the one that names the offending value."""

import math
import random

import pytest
import torch

from handlers.errors import RequestError
from handlers.numbers import FEW_VALUES, Bounds

BOUNDS = Bounds(torch.tensor([-1.0, 0.0, 10.0], dtype=torch.float64), torch.tensor([1.0, 5.0, 20.0]).double(), 6.0)


def refused(values: list) -> bool:
    try:
        BOUNDS.check(torch.tensor(values, dtype=torch.float64).view(-1, 3), "x")
    except (RequestError, RuntimeError, OverflowError):  # out of range, or an integer no float holds
        return True
    return False


def rows(rng: random.Random, n: int) -> list:
    """n rows, mostly within range, some values just past an edge or far out, of mixed ints and floats."""
    values = []
    for _ in range(n):
        for low, high in ((-1.0, 1.0), (0.0, 5.0), (10.0, 20.0)):
            pick = rng.random()
            if pick < 0.9:
                value = rng.uniform(low, high)
            elif pick < 0.95:
                value = rng.choice([low, high, math.nextafter(low, -math.inf), math.nextafter(high, math.inf)])
            else:
                value = rng.choice([int(low), int(high), high + 1e-9, low - 1, 1e308])
            values.append(value)
    return values


@pytest.mark.parametrize("seed", range(200))
def test_contains_agrees_with_check_on_random_rows(seed):
    values = rows(random.Random(seed), 1 + seed % 7)
    assert BOUNDS.contains(values, 3) == (not refused(values))


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf, 10**400, -(10**400), 1e308], ids=lambda v: str(v)[:12])
def test_what_no_float_holds_or_no_model_takes_is_left_to_check(odd):
    values = [0.0, 1.0, 15.0, 0.5, odd, 12.0]
    assert not BOUNDS.contains(values, 3)
    assert refused(values)


def test_the_edges_themselves_are_inside():
    assert BOUNDS.contains([-1.0, 0, 10, 1, 5.0, 20], 3) and BOUNDS.contains([], 3)


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf, 10**400, -(10**400), 1e308], ids=lambda v: str(v)[:12])
def test_what_no_float_holds_is_left_to_check_past_the_few_values_compared_one_by_one(odd):
    values = [0.0, 1.0, 15.0] * 4 + [0.5, odd, 12.0]
    assert len(values) > FEW_VALUES and not BOUNDS.contains(values, 3)
    assert BOUNDS.contains(values[:-3], 3)
