"""Temperature scaling and threshold rules against values worked out by hand.

Every expected number here is computed from its definition (a hand-made score list, the logistic
function, the NLL written out), never through ``histoscan.calibration`` itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from histoscan.calibration import fit_temperature, resolve_threshold, sigmoid

# ten validation scores, sorted, and their labels: 6 positives, 4 negatives
SCORES = np.array([0.05, 0.15, 0.30, 0.40, 0.45, 0.60, 0.70, 0.80, 0.90, 0.97])
LABELS = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 1])


def rates(threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when ``score >= threshold`` calls tumour, counted by hand."""
    pos, neg = SCORES[LABELS == 1], SCORES[LABELS == 0]
    return float((pos >= threshold).mean()), float((neg < threshold).mean())


def test_sigmoid_is_the_logistic_function() -> None:
    z = np.array([-700.0, -30.0, -2.0, -0.5, 0.0, 0.5, 2.0, 30.0, 700.0])
    expected = [1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in z]
    np.testing.assert_allclose(sigmoid(z), expected, rtol=1e-12, atol=1e-26)
    assert sigmoid(np.array([0.0]))[0] == 0.5
    assert np.all(np.isfinite(sigmoid(z)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in exp for huge logits of either sign
        assert sigmoid(np.array([-1e4, 1e4])).tolist() == pytest.approx([0.0, 1.0], abs=1e-20)


def test_sensitivity_rule_takes_the_highest_threshold_reaching_the_target() -> None:
    # the lowest-scored positive is 0.30: every positive is caught from 0.30 down, so
    # sens:0.95 (and sens:1.0) is 0.30; one positive may be missed for sens:0.8 (5/6 = 0.833),
    # which first happens at the second-lowest positive, 0.45
    assert resolve_threshold("sens:0.95", SCORES, LABELS) == pytest.approx(0.30)
    assert resolve_threshold("sens:1.0", SCORES, LABELS) == pytest.approx(0.30)
    assert resolve_threshold("sens:0.8", SCORES, LABELS) == pytest.approx(0.45)
    assert resolve_threshold(" SENS:0.5 ", SCORES, LABELS) == pytest.approx(0.70)  # 4/6 >= .5
    sens, spec = rates(0.30)
    assert sens == 1.0 and spec == 0.5  # 0.05 and 0.15 stay below: not the 0.0 of the wrong end


def test_youden_rule_maximises_sensitivity_plus_specificity() -> None:
    # J at each score: 0.30 -> 1 + 0.5 - 1 = 0.5; 0.45 -> 5/6 + 0.75 - 1 = 0.583;
    # 0.60 -> 4/6 + 0.75 - 1 = 0.417; 0.70 -> 4/6 + 1 - 1 = 0.667 (the best); 0.80 -> 0.5
    j = {t: sum(rates(t)) - 1 for t in SCORES}
    assert max(j, key=j.get) == 0.70
    assert resolve_threshold("youden", SCORES, LABELS) == pytest.approx(0.70)


@pytest.mark.parametrize(
    ("rule", "expected"), [(0.3, 0.3), ("0.25", 0.25), (1, 1.0), (0.0, 0.0), ("0", 0.0)]
)
def test_a_number_is_its_own_threshold(rule: object, expected: float) -> None:
    assert resolve_threshold(rule, None, None) == expected


def test_no_rule_means_the_stored_threshold_and_is_valid() -> None:
    from histoscan.calibration import check_threshold_rule

    assert check_threshold_rule(None) is None
    assert check_threshold_rule("youden") is None and check_threshold_rule(0.0) is None


def test_rules_need_validation_data_and_known_names() -> None:
    with pytest.raises(ValueError, match="needs validation predictions"):
        resolve_threshold("youden", None, LABELS)
    with pytest.raises(ValueError, match="needs validation predictions"):
        resolve_threshold("sens:0.9", SCORES, None)
    with pytest.raises(ValueError, match="unknown threshold rule 'median'"):
        resolve_threshold("median", SCORES, LABELS)


def nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of sigmoid(logits / t), written out term by term."""
    p = 1 / (1 + np.exp(-logits / t))
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fitted_temperature_recovers_the_truth_and_minimises_nll(true_t: float) -> None:
    rng = np.random.default_rng(int(true_t * 10))
    calibrated = rng.normal(0, 2, 40_000)  # logits whose sigmoid is the true probability
    labels = (rng.uniform(size=calibrated.size) < 1 / (1 + np.exp(-calibrated))).astype(float)
    logits = calibrated * true_t  # over- (T > 1) or under-confident (T < 1) by a known factor
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    best = nll(logits, labels, t)
    for other in (t * 0.97, t * 1.03, 1.0 if abs(t - 1) > 0.1 else 2.0):
        assert best <= nll(logits, labels, other) + 1e-9


def test_temperature_is_one_for_calibrated_logits_and_stays_in_bounds() -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(0, 1.5, 30_000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(int)
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    # labels unrelated to the logits: the flattest allowed model, T at its upper bound of 20
    assert 19.0 < fit_temperature(z, rng.integers(0, 2, z.size)) <= 20.0
    # labels that follow the logits exactly: the sharpest allowed, T at its lower bound of 0.05
    assert 0.05 <= fit_temperature(z, (z > 0).astype(int)) < 0.06


def test_youden_on_a_useless_model_calls_nothing_tumour() -> None:
    # scores that rank every negative above every positive: J is 0 at best, first reached above
    # every score, which is reported as the probability 1.0 (not roc_curve's infinity)
    labels = np.array([1, 1, 0, 0])
    assert resolve_threshold("youden", np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("sens:0", r"sensitivity must be in \(0, 1\]"),
        ("sens:1.5", r"sensitivity must be in \(0, 1\]"),
        ("sens:high", "sens: needs a number"),
        (1.5, r"threshold 1.5 is not a probability in \[0, 1\]"),
        ("-0.1", r"threshold -0.1 is not a probability"),
    ],
)
def test_impossible_rules_are_refused_before_any_work(rule: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        resolve_threshold(rule, SCORES, LABELS)
