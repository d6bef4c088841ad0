"""The instant model: character n-gram TF-IDF classifiers that refit on a CPU (seconds for hundreds of labels, about
two minutes for 4.5k labels over 549 departments).

Two small classifiers, because neither is best throughout the life of a project:

* ``PrototypeClassifier`` — cosine similarity to one prototype per department, built from the catalog's seed
  text (name, aliases, 职责 duties) plus the mean of its gold tickets. It makes sensible suggestions before
  anyone has labelled anything and does not lose them when the first few labels arrive.
* ``LinearSvmClassifier`` — a linear SVM over gold tickets (over the catalog texts until two departments have
  labels). With a few labels per department it is thrown off by what all tickets share (来电人反映…); with hundreds of labels it is
  far better (BENCHMARKS.md, section 3, against the TF-IDF + LinearSVC reference).

``fit_instant_model`` chooses by cross-validation on the training labels (``out_of_fold``), each method's accuracy
projected to every label along its learning curve: the SVM serves unless the prototypes clearly lead it
(``NEAR_TIE_ACCURACY``, ``SWITCH_Z``); before there are labels enough for folds, the prototypes serve until the SVM
is as accurate on the frozen split. Probabilities are
a softmax of the scores times a temperature fitted on the same out-of-fold scores; with too few labels the method's
constant serves, chosen by log-loss on the Shanghai split.
scikit-learn is imported on first fit, so importing the backend stays light.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.classifier import Distribution
from core.evaluation import evaluate
from core.routing import AutoRouting
from core.store import StoredLabel

# Below this many documents a char n-gram seen once is still worth keeping for the catalog's texts and the prototypes
# (a department's duties are one document). The SVM on gold labels keeps the reference's min_df=2 at every size, so it
# is the reference whatever the labels: with n-grams seen once the replays at 100 labels were 2.8-4.8 points lower on
# TipDM's long letters (0.8-2.0 higher on Shanghai k = 20's short ones; BENCHMARKS section 9, fourth pass).
MIN_DF_FROM_DOCS = 200
# The SVM's weights are departments x features, dense: the cap bounds a refit's memory whatever the texts (long
# random ones, 10^6 labels). The dev sets have 117k-194k character n-grams, so it does not bind on them.
MAX_FEATURES = 300_000
# Accuracy decides, not macro-F1: that rewards the prototypes' hits on rare departments, and chose them on Dalian's
# 236 units in 4 of 5 folds at 0.18-0.20 accuracy where the SVM had 0.51-0.56 (bench/learning.py). It is measured by
# cross-validation on the training labels, not on the frozen split alone: that is small early on (40-130 rows, a row
# 1-2.5 points) and drawn from labels the queue order picked (typical tickets, which the prototypes' class means
# answer well): it kept the prototypes serving on TipDM at 200 labels at 0.64 where the SVM answered 0.78. The
# prototypes are the cold start's model and the SVM the one that grows with the labels: once there are labels enough
# for folds, the SVM serves unless the prototypes lead it by more than NEAR_TIE_ACCURACY and by more than SWITCH_Z
# standard errors of the paired difference on the rows (McNemar's test, as Dietterich 1998 recommends for comparing
# two classifiers on one test set): never a coin flip on a few rows. Folds of 55-80 labels over 30 departments are
# where a lead out of fold is least sure to hold once the SVM learns from every label: on Dalian k = 20 (seed 9) the
# prototypes led by 0.10 out of fold at 83 labels (z = 1.44) and served 8-11 points below random order's SVM.
NEAR_TIE_ACCURACY = 0.02
SWITCH_Z = 1.645  # one-sided 95 %
# The out-of-fold pass (``out_of_fold``: the choice and the temperature) fits the SVM on (folds - 1) x the rows,
# against about 2.25 x the training rows for a refit's own two fits (the split's training rows, then every label); the
# prototypes' fits are a TF-IDF pass and a sparse mean, and each method's fits on one fold (for the learning curve) a
# third of the rows. With 3 folds a refit at 4.5k labels / 549 departments takes 1.8x its time without the pass (the
# temperature alone took 1.5-1.7x; 5 folds for it alone took 1.8x and would take about 2.8x near 2,000 labels). The
# row cap (a fixed-seed sample) bounds it.
CALIBRATION_FOLDS = 3
CALIBRATION_MAX_ROWS = 2000
CALIBRATION_MIN_ROWS = 50  # below this, a few rows a fold say little about a temperature: the method's constant serves
CALIBRATION_MIN_PER_DEPARTMENT = 2  # on average: with fewer, most out-of-fold rows are of departments the fold never saw
# PA-I's bound on one step (its C). Of 1, 0.3 and 0.1 on the dev sets' label streams (bench/incremental.py, BENCHMARKS
# section 10), 0.3 answered the next tickets best; 1 (a step that always reaches the margin) was no better than no
# update. A corrected ticket's answer still turns round when the correction was among its runners-up.
ONLINE_AGGRESSIVENESS = 0.3
TEMPERATURE_BOUNDS = (0.1, 1000.0)  # the search's range; the constants are 8 (SVM) and 100 (prototype cosines)


def tfidf_vectorizer(n_docs: int, dtype=np.float64, min_df: int | None = None):
    """The ticket features of the instant model (and of the queue order's clustering, ``learning.strategies.embed``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if min_df is None:
        min_df = 2 if n_docs >= MIN_DF_FROM_DOCS else 1
    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, max_features=MAX_FEATURES,
                           min_df=min_df, dtype=dtype)


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    logits = temperature * scores
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


class _TfidfClassifier:
    method = ""
    temperature = 1.0  # the multiplier of the scores in the softmax; a fitted one is set on the instance (and pickled)

    def __init__(self, version: str, departments: Sequence[str], max_text_chars: int = 20_000):
        self.version = version
        self.departments = tuple(departments)
        self.max_text_chars = max_text_chars
        self._vectorizer = None

    def _clip(self, texts: Sequence[str]) -> list[str]:
        return [t[: self.max_text_chars] for t in texts]

    def predict_proba(self, texts: Sequence[str]) -> Distribution:
        if self._vectorizer is None:
            raise RuntimeError(f"the {self.method} instant model has not been fitted")
        truncated = np.array([len(t) > self.max_text_chars for t in texts], dtype=bool)
        if len(self.departments) == 1:  # one department leaves nothing to decide
            return Distribution(probs=np.ones((len(texts), 1)), truncated=truncated)
        return Distribution(probs=self.probabilities(self.decision_scores(texts)), truncated=truncated)

    def decision_scores(self, texts: Sequence[str]) -> np.ndarray:
        """texts x departments scores before the softmax: the quality report ranks doubtful labels on these,
        because the tempered softmax saturates at 0 and 1 and ties its most confident mistakes."""
        if self._vectorizer is None:
            raise RuntimeError(f"the {self.method} instant model has not been fitted")
        return self._scores(self._vectorizer.transform(self._clip(texts)))

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return _softmax(scores, self.temperature)

    def _scores(self, features) -> np.ndarray:
        raise NotImplementedError


class PrototypeClassifier(_TfidfClassifier):
    method = "prototype"
    temperature = 100.0
    SEED_WEIGHT = 2.0  # the catalog's duties count as much as two average gold tickets

    def fit(self, texts: Sequence[str], labels: Sequence[str], seed_texts: Mapping[str, str]) -> PrototypeClassifier:
        from scipy import sparse
        from sklearn.preprocessing import normalize

        index = {d: i for i, d in enumerate(self.departments)}
        pairs = [(t, y) for t, y in zip(self._clip(texts), labels) if y in index]
        seeds = [seed_texts.get(d) or d for d in self.departments]
        self._vectorizer = tfidf_vectorizer(len(pairs) + len(seeds)).fit(seeds + [t for t, _ in pairs])
        # Everything stays sparse: a dense departments x n-grams matrix is gigabytes at 549 departments and 10^5 labels.
        prototypes = self.SEED_WEIGHT * normalize(self._vectorizer.transform(seeds))
        if pairs:
            gold = normalize(self._vectorizer.transform([t for t, _ in pairs]))
            rows = np.array([index[y] for _, y in pairs])
            counts = np.bincount(rows, minlength=len(self.departments)).astype(float)
            mean_of = sparse.csr_matrix((1.0 / counts[rows], (rows, np.arange(len(rows)))), shape=(len(self.departments), len(rows)))
            prototypes = prototypes + mean_of @ gold  # each department's mean gold ticket
        self._prototypes = normalize(prototypes).T.tocsr()  # n-grams x departments, laid out for the product below
        return self

    def _scores(self, features) -> np.ndarray:
        from sklearn.preprocessing import normalize

        scores = normalize(features) @ self._prototypes
        return scores.toarray() if hasattr(scores, "toarray") else np.asarray(scores)  # dense: a model saved before 2026-12


class LinearSvmClassifier(_TfidfClassifier):
    method = "svm"
    temperature = 8.0

    def fit(self, texts: Sequence[str], labels: Sequence[str], seed_texts: Mapping[str, str]) -> LinearSvmClassifier:
        from sklearn.svm import LinearSVC

        index = {d: i for i, d in enumerate(self.departments)}
        docs = [t for t, y in zip(self._clip(texts), labels) if y in index]
        ys = [y for y in labels if y in index]
        # The catalog texts are examples only until gold labels tell two departments apart; from then on the SVM is
        # the reference's (TF-IDF + LinearSVC on the gold tickets alone) and a department is suggested from its first
        # label on. Kept beside the labels, the department names cost 0.3-0.5 accuracy points on Dalian's 5 folds;
        # kept for the departments without labels, they changed 9 and 25 answers on two folds of Shanghai's 549
        # units, 2 and 3 tickets fewer right (BENCHMARKS section 9). The catalog still routes a young project through
        # the prototypes.
        known = set(ys)
        if len(known) < 2:
            unlabelled = [d for d in self.departments if d not in known]
            docs += [seed_texts.get(d) or d for d in unlabelled]
            ys += unlabelled
        try:
            self._vectorizer = tfidf_vectorizer(len(docs), min_df=2 if len(known) >= 2 else None)
            features = self._vectorizer.fit_transform(docs)
        except ValueError:  # no n-gram in two tickets (a handful of unrelated ones): keep those seen once
            self._vectorizer = tfidf_vectorizer(len(docs), min_df=1)
            features = self._vectorizer.fit_transform(docs)
        if len(self.departments) > 1:
            with warnings.catch_warnings():  # "more classes than half the samples" is expected before labels exist
                warnings.simplefilter("ignore", UserWarning)
                # Unweighted classes: "balanced" weights cost 13 accuracy points on held-out Dalian tickets and made
                # the model jump as labels arrived. A fixed seed makes the same labels give the same model.
                self._svm = LinearSVC(C=1.0, random_state=0).fit(features, ys)
            self._columns = np.array([index[c] for c in self._svm.classes_])
        return self

    def update(self, texts: Sequence[str], labels: Sequence[str]) -> int:
        """Take in new labels at once, before the next refit: one passive-aggressive step per label on each
        one-vs-rest weight vector (PA-I, Crammer et al. 2006, "Online Passive-Aggressive Algorithms", JMLR 7), the
        smallest change that gives the ticket a margin of 1 for its department and -1 for every other, bounded by
        ONLINE_AGGRESSIVENESS. A corrected ticket, and any near-copy of it, is answered with the correction from
        then on; n-grams the fit never saw are not learnt (the refit learns them). Returns the labels taken in."""
        if len(self.departments) < 2:
            return 0
        column = {c: i for i, c in enumerate(self._svm.classes_)}
        pairs = [(t, column[y]) for t, y in zip(self._clip(texts), labels) if y in column]
        if not pairs:
            return 0
        features = self._vectorizer.transform([t for t, _ in pairs])
        coef, intercept = self._svm.coef_, self._svm.intercept_
        for row, (_, target) in enumerate(pairs):
            start, end = features.indptr[row], features.indptr[row + 1]
            idx, values = features.indices[start:end], features.data[start:end]
            norm = float(values @ values)
            if norm == 0:
                continue
            if coef.shape[0] == 1:  # two departments: one weight vector, positive for classes_[1]
                signs = np.array([1.0 if target == 1 else -1.0])
            else:
                signs = np.full(coef.shape[0], -1.0)
                signs[target] = 1.0
            loss = np.maximum(0.0, 1.0 - signs * (coef[:, idx] @ values + intercept))
            step = np.minimum(ONLINE_AGGRESSIVENESS, loss / norm)
            coef[:, idx] += (step * signs)[:, None] * values[None, :]
        return len(pairs)

    def _scores(self, features) -> np.ndarray:
        decision = self._svm.decision_function(features)
        if decision.ndim == 1:  # two classes: LinearSVC answers one score per ticket, positive for classes_[1]
            decision = np.column_stack([-decision, decision])
        scores = np.full((features.shape[0], len(self.departments)), -np.inf)
        scores[:, self._columns] = decision
        return scores


METHODS = (PrototypeClassifier, LinearSvmClassifier)


def fit_temperature(scores: np.ndarray, gold: np.ndarray) -> float:
    """The temperature (multiplier of `scores`) that minimises the negative log-likelihood of the `gold` columns:
    temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), a bounded 1-D search on its
    logarithm. It rescales every probability and never changes which department ranks first."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    rows = np.arange(len(gold))

    def nll(log_temperature: float) -> float:
        logits = np.exp(log_temperature) * scores
        return float(np.mean(logsumexp(logits, axis=1) - logits[rows, gold]))

    return float(np.exp(minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded").x))


def _stratified_folds(labels: Sequence[str], folds: int, rng: np.random.Generator) -> np.ndarray:
    """The fold of each row: each department's rows, shuffled, are dealt round the folds in turn, the deal carrying
    on from one department to the next, so departments with fewer rows than folds still spread over all of them."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        rows_of[label].append(i)
    fold = np.empty(len(labels), dtype=int)
    dealt = 0
    for label in sorted(rows_of):
        rows = rng.permutation(rows_of[label])
        fold[rows] = (dealt + np.arange(len(rows))) % folds
        dealt += len(rows)
    return fold


@dataclass(frozen=True)
class OutOfFold:
    """Every method's scores on sampled training rows, each row scored by the method fitted on the other folds, and
    its accuracy fitted on one fold and scored on the others (a third of the rows against two thirds, with 3 folds):
    two points of its learning curve."""
    gold: np.ndarray  # the column of each row's department
    scores: dict[type, np.ndarray]  # method -> rows x departments
    one_fold_accuracy: dict[type, float]

    def correct(self, method: type) -> list[bool]:
        return list(self.scores[method].argmax(axis=1) == self.gold)

    def projected_accuracy(self, method: type) -> float:
        """The method's accuracy with every label, read off a learning curve straight in log(labels) through its
        accuracy at (folds - 1)/folds and at 1/folds of them (learning curves of this kind are close to power laws,
        Viering & Loog 2022, "The Shape of Learning Curves: a Review"). Out of fold alone understates a method whose
        accuracy still climbs with every label (the SVM early on) against one whose curve has levelled off (the
        prototypes): on TipDM at 200 labels the SVM trailed them by 0.025 out of fold and led them by 0.13 on the
        traffic, fitted on every label."""
        folds = CALIBRATION_FOLDS
        at_most = float(np.mean(self.correct(method)))
        slope = (at_most - self.one_fold_accuracy[method]) / math.log(folds - 1)
        return at_most + slope * math.log(folds / (folds - 1))

    def temperature(self, method: type) -> float | None:
        """``fit_temperature`` on the method's scores (Guo et al. 2017, "On Calibration of Modern Neural Networks").
        A row whose department had no label in the other folds scores -inf there (the SVM cannot answer it): its loss
        is infinite at every temperature, which would make every temperature equally bad, so it is left out."""
        rows = np.arange(len(self.gold))
        answerable = np.isfinite(self.scores[method][rows, self.gold])
        return fit_temperature(self.scores[method][answerable], self.gold[answerable]) if answerable.any() else None


def out_of_fold(methods: Sequence[type[_TfidfClassifier]], departments: Sequence[str], labels: tuple[Sequence[str], Sequence[str]],
                seed_texts: Mapping[str, str], max_text_chars: int = 20_000) -> OutOfFold | None:
    """The `methods`' out-of-fold scores on the (texts, labels): CALIBRATION_FOLDS stratified folds of at most
    CALIBRATION_MAX_ROWS rows (a fixed-seed sample), each fold scored by each method fitted on the others and the
    seed texts; and each method fitted on each fold alone, scored on the others. None when there are too few labels
    for folds to say anything (CALIBRATION_MIN_ROWS, on average CALIBRATION_MIN_PER_DEPARTMENT per department, two
    departments)."""
    index = {d: i for i, d in enumerate(departments)}
    rows = [(text, label) for text, label in zip(*labels) if label in index]
    labelled = {label for _, label in rows}
    if len(rows) < max(CALIBRATION_MIN_ROWS, CALIBRATION_MIN_PER_DEPARTMENT * len(labelled)) or len(departments) < 2:
        return None
    rng = np.random.default_rng(0)  # the same labels give the same choice and temperature
    if len(rows) > CALIBRATION_MAX_ROWS:
        rows = [rows[i] for i in np.sort(rng.choice(len(rows), CALIBRATION_MAX_ROWS, replace=False))]
    texts, ys = [t for t, _ in rows], [y for _, y in rows]
    gold = np.array([index[y] for y in ys])
    fold = _stratified_folds(ys, CALIBRATION_FOLDS, rng)
    scores = {method: np.empty((len(rows), len(departments))) for method in methods}
    one_fold_right = dict.fromkeys(methods, 0)

    def fitted(method, on: np.ndarray):
        return method("out-of-fold", departments, max_text_chars).fit([texts[i] for i in on], [ys[i] for i in on], seed_texts)

    for k in range(CALIBRATION_FOLDS):
        held, others = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        for method in methods:
            scores[method][held] = fitted(method, others).decision_scores([texts[i] for i in held])
            one_fold_right[method] += int((fitted(method, held).decision_scores([texts[i] for i in others]).argmax(axis=1) == gold[others]).sum())
    one_fold_accuracy = {method: right / ((CALIBRATION_FOLDS - 1) * len(rows)) for method, right in one_fold_right.items()}
    return OutOfFold(gold, scores, one_fold_accuracy)


def fit_instant_model(version: str, departments: Sequence[str], train: tuple[Sequence[str], Sequence[str]],
                      all_labels: tuple[Sequence[str], Sequence[str]], seed_texts: Mapping[str, str],
                      evaluate: Callable[[_TfidfClassifier], dict], max_text_chars: int = 20_000,
                      serving_method: str | None = None) -> tuple[_TfidfClassifier, dict]:
    """Choose the method by cross-validation on the training labels, then refit it on every label.

    Each method is fitted on the `train` (texts, labels) and scored by `evaluate` on the evaluation split, and scored
    out of fold on the training labels (``out_of_fold``). The choice compares the methods' accuracy with every
    training label, projected from two points of their learning curves (``OutOfFold.projected_accuracy``); with too
    few labels for folds, their accuracy on the split. On the split alone the prototypes serve until the SVM is at
    least as accurate. A serving SVM, and the SVM whenever there are labels enough for folds, gives way only to
    prototypes that are ``clearly_better``: ahead by more than NEAR_TIE_ACCURACY, and by more than SWITCH_Z standard
    errors of the paired difference on the split's and the out-of-fold rows (with the reports' per-row ``correct``
    flags). With nothing to evaluate on, the serving method stays (the prototypes at
    first). The chosen method's temperature is fitted on its out-of-fold scores, and its report redone with it, so
    the split's ECE and auto-routing thresholds are those of the probabilities served.
    The chosen method is then refitted on `all_labels`, the usual final refit after model selection: the report's
    numbers stay those of a model that never saw the split. Returns (classifier, report)."""
    report: dict = {}
    candidates = {method: method(version, departments, max_text_chars).fit(*train, seed_texts) for method in METHODS}
    for method, candidate in candidates.items():
        report[method.method] = evaluate(candidate)
    started = time.perf_counter()
    folds = out_of_fold(METHODS, departments, train, seed_texts, max_text_chars)
    folds_seconds = time.perf_counter() - started
    rows = {method: (report[method.method].pop("correct", None) or []) + (folds.correct(method) if folds else []) for method in METHODS}

    def accuracy(method) -> float:
        if folds:
            return folds.projected_accuracy(method)
        value = report[method.method].get("accuracy")
        return -1.0 if value is None else value

    def clearly_better(challenger, incumbent) -> bool:
        if accuracy(challenger) <= accuracy(incumbent) + NEAR_TIE_ACCURACY:
            return False
        if not rows[challenger]:
            return True
        lead = (sum(rows[challenger]) - sum(rows[incumbent])) / len(rows[challenger])
        discordant = sum(a != b for a, b in zip(rows[challenger], rows[incumbent]))
        return lead > SWITCH_Z * math.sqrt(discordant) / len(rows[challenger])

    prototype, svm = METHODS
    if accuracy(svm) < 0:  # nothing to evaluate on: whatever serves, or the cold start's prototypes
        chosen = svm if serving_method == svm.method else prototype
    elif serving_method == svm.method or folds:
        chosen = prototype if clearly_better(prototype, svm) else svm
    else:
        chosen = svm if accuracy(svm) >= accuracy(prototype) else prototype
    report["chosen"] = chosen.method
    report["chosen_on"] = {"cross_validation_rows": len(folds.gold) if folds else 0,
                           **{method.method: round(accuracy(method), 4) for method in METHODS}}
    temperature = folds.temperature(chosen) if folds else None
    if temperature is not None:
        candidates[chosen].temperature = temperature
        report[chosen.method] = evaluate(candidates[chosen])  # the choice stands: a temperature never changes the top-1
        report[chosen.method].pop("correct", None)
    report["calibration"] = {"temperature": round(temperature or chosen.temperature, 4), "fitted": temperature is not None,
                             "seconds": round(folds_seconds, 3)}
    final = chosen(version, departments, max_text_chars).fit(*all_labels, seed_texts)
    if temperature is not None:
        final.temperature = temperature
    return final, report


def fit_on_labels(version: str, departments: Sequence[str], labels: Sequence[StoredLabel], seed_texts: Mapping[str, str],
                  max_text_chars: int = 20_000, serving_method: str | None = None,
                  routing: AutoRouting | None = None, max_train_labels: int | None = None) -> tuple[_TfidfClassifier, dict]:
    """The instant model as the service fits it from its label store: the method is chosen by cross-validation on
    the training labels (on the frozen evaluation split while they are too few for folds, the `serving_method` kept
    on near-ties; with folds, the SVM kept on near-ties), then refitted on every label of the departments served. Returns (classifier, metrics).

    With `routing`, the metrics carry auto-routing thresholds proven on the split for the fit that never saw it;
    the version served also learnt the split's rows, so for instant versions the audits are what check the promise.

    With `max_train_labels`, at most that many training labels are fitted (`newest_per_department`): a refit costs
    ~N^1.35 and a history of 10^5 labels would take the better part of an hour on two cores."""
    known = set(departments)
    labels = [label for label in labels if label.department in known]
    train = [label for label in labels if label.split == "train"]
    held_out = [label for label in labels if label.split == "eval"]
    stored = len(labels)
    if max_train_labels is not None and len(train) > max_train_labels:
        train = newest_per_department(train, max_train_labels)
        labels = train + held_out
    clf, report = fit_instant_model(
        version, departments, train=([l.text for l in train], [l.department for l in train]),
        all_labels=([l.text for l in labels], [l.department for l in labels]),
        seed_texts={name: text for name, text in seed_texts.items() if name in known},
        evaluate=lambda candidate: evaluate(candidate, held_out, routing, rows=True), max_text_chars=max_text_chars, serving_method=serving_method)
    metrics = {**report[clf.method], "method": clf.method, "chosen_on": report["chosen_on"], "calibration": report["calibration"],
               "train_labels": len(train), "labels": stored, "fitted_labels": len(labels),
               "methods": {m.method: {k: report[m.method].get(k) for k in ("accuracy", "macro_f1", "n")} for m in METHODS}}
    return clf, metrics


def newest_per_department(labels: Sequence[StoredLabel], limit: int) -> list[StoredLabel]:
    """At most `limit` labels, taken round-robin over the departments, newest first within each: every department
    keeps its newest labels however rare it is, and within a department recent labels (today's duties and wording)
    win over old ones."""
    by_department: dict[str, list[StoredLabel]] = {}
    for label in sorted(labels, key=lambda l: l.seq, reverse=True):
        by_department.setdefault(label.department, []).append(label)
    ranked = sorted(((rank, -label.seq, label) for group in by_department.values() for rank, label in enumerate(group)),
                    key=lambda item: item[:2])
    return [label for _, _, label in ranked[:limit]]

