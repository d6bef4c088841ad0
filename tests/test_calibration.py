"""The instant model's probabilities are calibrated: the temperature is fitted out of fold, and ECE measures it."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from core.evaluation import expected_calibration_error
from learning.instant_model import CALIBRATION_MIN_ROWS, LinearSvmClassifier, PrototypeClassifier, fit_instant_model, out_of_fold

NAMES = ("甲单位", "乙单位", "丙单位", "丁单位")
TOPICS = ("路灯", "噪音", "积水", "停车")
FILLER = "来电人反映小区附近情况请尽快处理谢谢市民热线"


def tickets(n: int, seed: int, noise: float = 0.3) -> tuple[list[str], list[str]]:
    """Tickets whose topic word names the department, in filler text; a share `noise` carries another
    department's word too, so no model can be sure of every ticket."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        d = int(rng.integers(len(NAMES)))
        words = [TOPICS[d]] + ([TOPICS[int(rng.integers(len(NAMES)))]] if rng.random() < noise else [])
        filler = "".join(rng.choice(list(FILLER), size=12))
        texts.append(filler[:6] + "".join(rng.permutation(words)) + filler[6:])
        labels.append(NAMES[d])
    return texts, labels


def calibrate(method, departments, labels, seed_texts) -> float | None:
    """The temperature the service fits for `method` on these labels; None when it keeps the method's constant."""
    scores = out_of_fold((method,), departments, labels, seed_texts)
    return None if scores is None else scores.temperature(method)


def nll(clf, texts, labels) -> float:
    probs = clf.predict_proba(texts).probs
    return float(-np.mean(np.log([probs[i, clf.departments.index(y)] for i, y in enumerate(labels)])))


def test_ece_is_near_zero_when_probabilities_come_true_and_large_when_over_confident():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.3, 1.0, 20_000)
    correct = rng.random(20_000) < p  # a probability of p is right p of the time
    assert expected_calibration_error(p, correct) < 0.02
    assert expected_calibration_error(np.full_like(p, 0.99), correct) > 0.25  # claims 0.99, is right about 0.65 of the time
    assert expected_calibration_error([0.9] * 10, [True] * 9 + [False]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0] * 4, [True, True, False, False]) == pytest.approx(0.5)


def test_the_fitted_temperature_lowers_the_held_out_nll_below_the_fixed_constant():
    train, held_out = tickets(300, seed=1), tickets(300, seed=2)
    for method in (PrototypeClassifier, LinearSvmClassifier):
        temperature = calibrate(method, NAMES, train, {})
        assert temperature is not None and temperature != method.temperature
        clf = method("v", NAMES).fit(*train, {})
        fixed = nll(clf, *held_out)
        clf.temperature = temperature
        assert nll(clf, *held_out) < fixed, method.method


def test_the_same_labels_give_the_same_temperature():
    train = tickets(120, seed=3)
    assert calibrate(LinearSvmClassifier, NAMES, train, {}) == calibrate(LinearSvmClassifier, NAMES, train, {})


def test_few_labels_keep_the_methods_constant():
    few = tickets(CALIBRATION_MIN_ROWS - 1, seed=4)
    assert calibrate(LinearSvmClassifier, NAMES, few, {}) is None
    # Enough rows, but on average fewer than two per department: most folds would not have seen their department.
    names = tuple(f"单位{i}" for i in range(60))
    assert calibrate(PrototypeClassifier, names, ([f"第{i}件事" for i in range(60)], list(names)), {}) is None
    clf, report = fit_instant_model("v", NAMES, few, few, {}, lambda c: {"macro_f1": 0.5})
    assert report["calibration"]["fitted"] is False
    assert clf.temperature == type(clf).temperature == report["calibration"]["temperature"]


def test_the_served_model_carries_the_temperature_its_split_report_was_made_with():
    train, everything = tickets(200, seed=5), tickets(260, seed=5)
    seen = []

    def evaluate(candidate):
        seen.append((candidate.method, candidate.temperature))
        return {"accuracy": 0.9 if candidate.method == "svm" else 0.5}

    clf, report = fit_instant_model("v", NAMES, train, everything, {}, evaluate)
    assert report["calibration"]["fitted"]
    assert seen[-1] == (clf.method, clf.temperature) != (clf.method, type(clf).temperature)  # the split's report redone with it
    assert report["calibration"]["temperature"] == pytest.approx(clf.temperature, abs=1e-4)
    assert pickle.loads(pickle.dumps(clf)).temperature == clf.temperature  # saved with the model


def test_a_department_with_a_single_label_does_not_throw_the_svms_temperature_off():
    """The SVM cannot answer a department the other folds had no label of (its score is -inf); such a row has an
    infinite loss at every temperature. Shanghai's 549 units have dozens of these: they took the temperature to a
    bound and the ECE from 0.18 to 0.55 until they were left out of the fit."""
    train, held_out = tickets(300, seed=1), tickets(300, seed=2)
    names = (*NAMES, "戊单位")
    with_single = (train[0] + ["小区门口垃圾堆放多日无人清理"], train[1] + ["戊单位"])
    temperature = calibrate(LinearSvmClassifier, names, with_single, {})
    assert temperature is not None and temperature == pytest.approx(calibrate(LinearSvmClassifier, NAMES, train, {}), rel=0.25)
    clf = LinearSvmClassifier("v", names).fit(*with_single, {})
    fixed = nll(clf, *held_out)
    clf.temperature = temperature
    assert nll(clf, *held_out) < fixed
