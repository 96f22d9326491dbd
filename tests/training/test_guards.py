"""DivergenceGuard without running EM: its decisions on given losses (training/guards.py).

(tests/training/test_robustness.py checks the trainer's rollbacks end to end.)
"""

import math

import pytest

from tfdgmm.training.guards import DivergenceGuard


class Probe:
    """A probe loss that returns the given values in turn and counts its calls."""

    def __init__(self, *values):
        self.values = list(values)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.values.pop(0)


def finite():
    return True


def run_window(guard, u, losses, total=1000):
    """Feed one window of per-update losses ending at update `u`; the end-of-window problem."""
    problem = guard.add_chunk(sum(losses), len(losses), True, finite)
    assert problem is None
    assert guard.is_boundary(u, total)
    return guard.end_window(u, total)


def test_windows_and_anchors():
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0), window=10, anchor_every=25)
    assert guard.every == 20  # rounded to a multiple of the window
    assert guard.chunk_size(0, 7) == 7 and guard.chunk_size(7, 7) == 3
    assert guard.chunk_size(13, 50) == 7
    assert guard.is_boundary(10, 1000) and not guard.is_boundary(15, 1000)
    assert guard.is_boundary(15, 15)  # the end of the M-step
    assert guard.is_anchor(40) and not guard.is_anchor(30)


def test_a_falling_loss_passes_and_sets_the_baselines():
    probe = Probe(50.0, 48.0)
    guard = DivergenceGuard(5.0, 100.0, probe, window=10, anchor_every=20)
    assert probe.calls == 1  # the probe's starting value
    assert guard.last_window_loss is None
    assert run_window(guard, 10, [90.0] * 10) is None
    assert guard.last_window_loss == 90.0 and guard.state["best"] == 90.0
    assert probe.calls == 1  # not an anchor boundary: no probe
    assert run_window(guard, 20, [92.0] * 10) is None  # within 5 nats of the best: fine
    assert probe.calls == 2 and guard.state["best_probe"] == 48.0
    assert guard.state["best"] == 90.0 and guard.last_window_loss == 92.0
    assert guard.state["sum"] == 0.0 and guard.state["done"] == 0


def test_a_rising_window_mean_is_a_problem_naming_the_numbers():
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0), window=10)
    problem = run_window(guard, 10, [106.0] * 10)
    assert problem.startswith("diverging loss (106 nats/image over updates 0-10 against 100")
    assert "(its start)" in problem
    assert guard.last_window_loss is None  # a failed window changes no baseline
    assert guard.state["best"] == 100.0


def test_a_rising_probe_is_a_problem_at_anchor_boundaries():
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0, 56.0), window=10, anchor_every=10)
    problem = run_window(guard, 10, [90.0] * 10)
    assert problem.startswith("diverging loss (a fixed probe minibatch: 56 nats/image against 50")


def test_a_nan_probe_is_a_problem():
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0, math.nan), window=10, anchor_every=10)
    assert "probe" in run_window(guard, 10, [90.0] * 10)


def test_non_finite_loss_and_parameters():
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0))
    checked = []

    def params():
        checked.append(1)
        return False

    assert guard.add_chunk(math.nan, 3, False, params) == "non-finite loss"
    assert not checked  # the parameters are checked only after a finite loss
    assert guard.add_chunk(1.0, 3, True, params) == "non-finite parameters"
    assert checked


def test_checks_off_only_nan_counts():
    probe = Probe()
    guard = DivergenceGuard(0.0, 100.0, probe, window=10, anchor_every=10)
    assert run_window(guard, 10, [1e9] * 10) is None  # a finite blow-up goes through
    assert probe.calls == 0
    assert guard.last_window_loss == 1e9
    assert guard.add_chunk(math.inf, 1, False, finite) == "non-finite loss"


def test_reset_and_state_round_trip():
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0, 49.0), window=10)
    run_window(guard, 10, [90.0] * 10)
    guard.add_chunk(30.0, 3, True, finite)
    saved = dict(guard.state)
    again = DivergenceGuard(5.0, 100.0, Probe(), window=10, state=saved)  # no probe call
    assert again.state == saved and again.last_window_loss == 90.0
    assert again.end_window(20, 1000) is None and again.last_window_loss == 10.0
    guard.reset()
    assert guard.state == {
        "sum": 0.0,
        "done": 0,
        "best": 100.0,
        "best_probe": 49.0,
        "last_window_loss": None,
    }


def test_an_empty_window_decides_nothing():
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0))
    assert guard.end_window(10, 1000) is None
    assert guard.last_window_loss is None


@pytest.mark.parametrize("window", [0, -3])
def test_window_is_at_least_one(window):
    guard = DivergenceGuard(5.0, 100.0, Probe(50.0), window=window)
    assert guard.window == 1 and guard.every == 100
