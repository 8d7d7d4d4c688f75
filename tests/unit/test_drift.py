"""core/drift.py: the two-sample statistics against reference computations, their false
alarms on samples from one distribution, and which backend of four is flagged."""

from __future__ import annotations

import random

from ctxroute.router.core.drift import (
    Answer,
    Window,
    fleet_scores,
    ks_distance,
    scores,
    share_score,
)
from hypothesis import given
from hypothesis import strategies as st


def reference_ks(a: list[float], b: list[float]) -> float:
    """The largest gap between the two empirical distribution functions, at every point."""
    points = sorted(set(a) | set(b))
    return max(abs(sum(x <= p for x in a) / len(a) - sum(y <= p for y in b) / len(b))
               for p in points)  # fmt: skip


samples = st.lists(st.integers(0, 20).map(float), min_size=1, max_size=40)


@given(samples, samples)
def test_ks_distance_is_the_reference_one(a: list[float], b: list[float]) -> None:
    assert abs(ks_distance(a, b) - reference_ks(a, b)) < 1e-12


def test_share_score_of_equal_shares_is_zero_and_grows_with_the_gap() -> None:
    assert share_score(10, 100, 10, 100) == 0.0
    assert share_score(0, 100, 0, 300) == 0.0  # none on either side: nothing to see
    assert share_score(30, 100, 3, 300) > 1.0 > share_score(6, 100, 3, 300)


def healthy(rng: random.Random, n: int) -> list[Answer]:
    out = []
    for _ in range(n):
        tokens = 1 + int(rng.expovariate(1 / 80))
        cut = tokens >= 256
        out.append(Answer(min(tokens, 256), cut, rng.gauss(40, 5), min(tokens, 256) / 300))
    return out


def drifted(rng: random.Random, n: int) -> list[Answer]:
    out = []
    for _ in range(n):
        tokens = 1 + int(rng.expovariate(1 / 28))
        cut = rng.random() < 0.3
        out.append(Answer(tokens, cut, rng.gauss(40, 5), tokens / 300))
    return out


def test_few_false_alarms_between_samples_of_one_distribution() -> None:
    rng = random.Random(1)
    alarms = trials = 0
    for _ in range(400):
        for score in scores(healthy(rng, 200), healthy(rng, 600)).values():
            trials += 1
            alarms += score >= 1.0
    # alpha is 1e-4 per comparison: 0.5% would be fifty times too many
    assert alarms / trials <= 0.005, (alarms, trials)


def test_one_drifting_backend_of_four_is_the_one_flagged() -> None:
    rng = random.Random(2)
    windows = {i: Window.new() for i in range(4)}
    for i in range(3):
        windows[i].answers.extend(healthy(rng, 200))
    windows[3].answers.extend(drifted(rng, 200))
    scored = fleet_scores(dict.fromkeys(range(4), "m"), windows)
    assert scored[3]["output_tokens"] >= 1.0 and scored[3]["length_stops"] >= 1.0
    for i in range(3):
        assert max(scored[i].values()) < 1.0, scored[i]


def test_too_few_answers_give_no_score_and_models_are_compared_apart() -> None:
    rng = random.Random(3)
    windows = {i: Window.new() for i in range(3)}
    windows[0].answers.extend(healthy(rng, 200))
    windows[1].answers.extend(drifted(rng, 200))  # another model: not a peer of 0
    windows[2].answers.extend(healthy(rng, 10))
    scored = fleet_scores({0: "a", 1: "b", 2: "a"}, windows)
    assert scored == {0: {}, 1: {}, 2: {}}


def test_a_change_made_to_every_backend_at_once_is_seen_against_their_baselines() -> None:
    from ctxroute.router.core.drift import WINDOW, baseline_scores

    rng = random.Random(4)
    windows = {i: Window.new() for i in range(4)}
    for w in windows.values():
        for answer in healthy(rng, WINDOW):
            w.add(answer)
    assert all(w.baseline is not None for w in windows.values())
    for w in windows.values():  # a new model version, rolled out everywhere
        for answer in drifted(rng, WINDOW):
            w.add(answer)
    peers = fleet_scores(dict.fromkeys(range(4), "m"), windows)
    assert max(max(p.values()) for p in peers.values()) < 1.0  # peers see nothing
    for w in windows.values():
        own = baseline_scores(w)
        assert own["output_tokens"] >= 1.0 and own["length_stops"] >= 1.0, own
        assert "tokens_per_s" not in own  # its speed follows its load: not compared


def test_the_baseline_follows_a_calm_window_and_holds_while_drifting() -> None:
    from ctxroute.router.core.drift import REBASE_EVERY, WINDOW, baseline_scores

    rng = random.Random(5)
    window = Window.new()
    for answer in healthy(rng, WINDOW):
        window.add(answer)
    first = window.baseline
    for answer in drifted(rng, REBASE_EVERY):
        window.add(answer)
    assert baseline_scores(window)["output_tokens"] >= 1.0
    assert window.baseline is first  # drifting: the baseline is kept
    for answer in healthy(rng, REBASE_EVERY):
        window.add(answer)
    assert max(baseline_scores(window).values()) < 1.0
    assert window.baseline is not first  # calm for long enough: taken again
    assert window.since_baseline == 0


def test_the_length_share_is_the_share_cut_by_max_tokens() -> None:
    window = Window.new()
    assert window.length_share() is None
    for i in range(100):
        window.add(Answer(10, i % 10 == 0, None, 0.1))
    assert window.length_share() == 0.1


def test_speed_scores_only_a_large_difference() -> None:
    from ctxroute.router.core.drift import ks_score

    rng = random.Random(6)
    busier = [rng.gauss(40, 5) for _ in range(200)]
    calmer = [rng.gauss(44, 5) for _ in range(200)]  # a batch a little smaller: benign
    assert ks_score(busier, calmer) >= 1.0  # significant...

    def speed(mine: list[float], others: list[float]) -> float:
        as_answers = [[Answer(50, False, r, 0.2) for r in rates] for rates in (mine, others)]
        return scores(*as_answers)["tokens_per_s"]

    assert speed(busier, calmer) < 1.0  # ...but under the distance speed must also reach
    slow = [rng.gauss(20, 5) for _ in range(200)]  # half speed: drift
    assert speed(slow, calmer) >= 1.0
