"""``bench/_paired.py``: the interleaving order and the statistics, on deterministic
callables and a fake clock (no timing here)."""

from __future__ import annotations

import pytest

import _paired as P  # bench/ is on sys.path (pyproject: pythonpath)

pytestmark = pytest.mark.kernel_free


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def sides_costing(clock, costs, log=None):
    """Sides whose call advances the fake clock by costs[name][round]."""
    calls = {name: 0 for name in costs}

    def make(name):
        def run(*args):
            i = calls[name]
            calls[name] += 1
            clock.t += costs[name][i % len(costs[name])]
            if log is not None:
                log.append((name, args))
            return name.upper()
        return run
    return {name: make(name) for name in costs}


def test_abba_order_and_every_permutation_of_three():
    assert [P.order_of_round(["a", "b"], r) for r in range(4)] == [
        ["a", "b"], ["b", "a"], ["b", "a"], ["a", "b"]]
    orders = [tuple(P.order_of_round(["a", "b", "c"], r)) for r in range(6)]
    assert len(set(orders)) == 6


def test_statistics_of_a_deterministic_pair():
    clock = FakeClock()
    # warm-up call first (cost index 0), then 5 timed rounds
    sides = sides_costing(clock, {"base": [9.0, 4.0, 6.0, 5.0, 4.0, 8.0],
                                  "cand": [9.0, 2.0, 2.0, 1.0, 4.0, 2.0]})
    res = P.paired(sides, rounds=5, warmup=1, clock=clock)
    assert res.rounds == 5
    b, c = res.side("base"), res.side("cand")
    assert b.times == [4.0, 6.0, 5.0, 4.0, 8.0] and c.times == [2.0, 2.0, 1.0, 4.0, 2.0]
    assert (b.min, b.median, b.max) == (4.0, 5.0, 8.0)
    assert (c.min, c.median, c.max) == (1.0, 2.0, 4.0)
    assert res.speedup("cand", "base") == 2.5            # 5 / 2
    assert res.ratio("cand", "base") == 0.4
    assert res.paired_ratios("base", "cand") == [2.0, 3.0, 5.0, 1.0, 4.0]
    assert res.paired_speedup("cand", "base") == (1.0, 3.0, 5.0)
    assert res.outputs == {"base": "BASE", "cand": "CAND"}
    # what record(...) of bench/conftest.py reads off a benchmark fixture
    assert (b.stats.stats.median, b.stats.stats.min, b.stats.stats.rounds) == (5.0, 4.0, 5)
    assert "base 4.0 / 5.0 / 8.0" in res.summary(items=int(1e9))


def test_setup_args_per_round_and_side_and_the_order_followed():
    clock, log = FakeClock(), []
    sides = sides_costing(clock, {"a": [1.0], "b": [1.0]}, log)
    P.paired(sides, rounds=4, warmup=1, clock=clock, setup=lambda r, s: (r, s))
    assert log == [("a", (-1, "a")), ("b", (-1, "b")),
                   ("a", (0, "a")), ("b", (0, "b")), ("b", (1, "b")), ("a", (1, "a")),
                   ("b", (2, "b")), ("a", (2, "a")), ("a", (3, "a")), ("b", (3, "b"))]


def test_check_sees_outputs_of_warm_up_first_and_last_rounds():
    clock, seen = FakeClock(), []
    sides = sides_costing(clock, {"a": [1.0], "b": [1.0]})
    P.paired(sides, rounds=3, warmup=1, clock=clock, check=seen.append)
    assert seen == [{"a": "A", "b": "B"}] * 3
    seen.clear()
    P.paired(sides, rounds=1, warmup=0, clock=clock, check=seen.append)   # CI: one round
    assert seen == [{"a": "A", "b": "B"}]

    def bad(out):
        raise AssertionError("outputs differ")
    with pytest.raises(AssertionError):
        P.paired(sides, rounds=1, warmup=0, clock=clock, check=bad)


def test_budget_adds_rounds_in_pairs():
    clock = FakeClock()
    sides = sides_costing(clock, {"a": [1.0], "b": [1.0]})           # 2 s a round
    res = P.paired(sides, rounds=2, warmup=0, clock=clock, max_rounds=100, budget_s=11.0)
    assert res.rounds == 4                 # 4 rounds = 8 s; 6 rounds would be 12 s
    res = P.paired(sides, rounds=3, warmup=0, clock=clock, max_rounds=100, budget_s=0.0)
    assert res.rounds == 3                 # the minimum is kept whatever the budget
    with pytest.raises(ValueError):
        P.paired(sides, rounds=0, clock=clock)


def test_the_load_is_recorded():
    res = P.paired({"a": lambda: sum(range(1000))}, rounds=2, warmup=0)
    load = res.load
    assert load.wall_s > 0 and load.cpus >= 1 and load.others_cpu_s >= 0
    d = load.as_dict()
    assert set(d) >= {"loadavg_1m", "others_cores", "wall_s", "cpus"}
    assert "cores" in str(load)
