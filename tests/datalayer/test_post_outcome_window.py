"""OutcomeWindow drops outcomes older than its window when it is read, not at each add, and
counts exactly what expiring at every add counted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from igw.datalayer.outlier import OutcomeWindow, OutlierPolicy


def _eager_counts(events: list[tuple[float, bool]], policy: OutlierPolicy, now: float):
    """(failures, total) as a window that expires at every add keeps them: the newest
    ``max_samples`` outcomes, of those the ones not older than ``now - window``."""
    kept = [e for e in events[-policy.max_samples :] if e[0] >= now - policy.window]
    return sum(1 for _, ok in kept if not ok), len(kept)


_steps = st.lists(
    st.tuples(
        st.sampled_from(["add", "read"]),
        st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
        st.booleans(),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(_steps, st.integers(min_value=1, max_value=8))
def test_reads_count_what_expiring_at_every_add_counted(steps, max_samples):
    policy = OutlierPolicy(window=5.0, max_samples=max_samples, min_failures=2)
    window = OutcomeWindow(policy)
    events: list[tuple[float, bool]] = []
    now = 0.0
    for action, step, ok in steps:
        now += step
        if action == "add":
            window.add(now, ok)
            events.append((now, ok))
        else:
            expected = _eager_counts(events, policy, now)
            assert window.counts(now) == expected
            assert window.is_outlier(now) == (
                expected[0] >= policy.min_failures
                and expected[0] >= policy.error_rate * expected[1]
            )


def test_an_add_does_not_walk_the_window(monkeypatch):
    window = OutcomeWindow(OutlierPolicy(window=1.0))
    window.add(0.0, False)

    def walked(now: float) -> None:
        raise AssertionError("add expired the window")

    monkeypatch.setattr(OutcomeWindow, "_expire", walked)
    window.add(10.0, True)  # the failure at 0.0 is out of the window, dropped at the read
    monkeypatch.undo()
    assert window.counts(10.0) == (0, 1)


def test_the_window_keeps_at_most_max_samples_between_reads():
    window = OutcomeWindow(OutlierPolicy(window=1.0, max_samples=4))
    for i in range(10):
        window.add(float(i), False)
    assert len(window._events) == 4
    assert window.counts(9.0) == (2, 2)  # 8.0 and 9.0 are within a second of 9.0
