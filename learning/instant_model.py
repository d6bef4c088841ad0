"""The instant model: character n-gram TF-IDF classifiers that refit on a CPU (seconds for hundreds of labels, about
two minutes for 4.5k labels over 549 departments).

Two small classifiers, because neither is best throughout the life of a project:

* ``PrototypeClassifier`` — cosine similarity to one prototype per department, built from the catalog's seed
  text (name, aliases, 职责 duties) plus the mean of its gold tickets. It makes sensible suggestions before
  anyone has labelled anything and does not lose them when the first few labels arrive.
* ``LinearSvmClassifier`` — a linear SVM over gold tickets and seed texts. With a few labels per department it
  is thrown off by what all tickets share (来电人反映…); with hundreds of labels it is far better (Shanghai
  set: accuracy 0.72 against 0.55 for the prototypes).

``fit_instant_model`` keeps the one with the better macro-F1 on the frozen evaluation split, and keeps serving
the method already serving on near-ties (``NEAR_TIE_F1``).
Probabilities are a softmax of the scores; the temperatures were chosen by log-loss on the Shanghai split.
scikit-learn is imported on first fit, so importing the backend stays light.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from core.classifier import Distribution
from core.evaluation import evaluate
from core.routing import AutoRouting
from core.store import StoredLabel

MIN_DF_FROM_DOCS = 200  # below this many documents a char n-gram seen once is still worth keeping
# The SVM's weights are departments x features, dense: the cap bounds a refit's memory whatever the texts (long
# random ones, 10^6 labels). The dev sets have 117k-194k character n-grams, so it does not bind on them.
MAX_FEATURES = 300_000
# The evaluation split is small early on (60-130 rows), so macro-F1 differences below this are noise: a method
# that only ties the serving one would make the served model jump between methods from one refit to the next.
NEAR_TIE_F1 = 0.01


def _vectorizer(n_docs: int):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, max_features=MAX_FEATURES,
                           min_df=2 if n_docs >= MIN_DF_FROM_DOCS else 1)


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    logits = temperature * scores
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


class _TfidfClassifier:
    method = ""
    temperature = 1.0

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
        self._vectorizer = _vectorizer(len(pairs) + len(seeds)).fit(seeds + [t for t, _ in pairs])
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
        docs += [seed_texts.get(d) or d for d in self.departments]
        ys += list(self.departments)
        self._vectorizer = _vectorizer(len(docs))
        features = self._vectorizer.fit_transform(docs)
        if len(self.departments) > 1:
            with warnings.catch_warnings():  # "more classes than half the samples" is expected before labels exist
                warnings.simplefilter("ignore", UserWarning)
                # Unweighted classes: "balanced" weights cost 13 accuracy points on held-out Dalian tickets and made
                # the model jump as labels arrived. A fixed seed makes the same labels give the same model.
                self._svm = LinearSVC(C=1.0, random_state=0).fit(features, ys)
            self._columns = np.array([index[c] for c in self._svm.classes_])
        return self

    def _scores(self, features) -> np.ndarray:
        decision = np.atleast_2d(self._svm.decision_function(features))
        if decision.shape[1] == 1:  # LinearSVC answers one column for two classes
            decision = np.hstack([-decision, decision])
        scores = np.full((features.shape[0], len(self.departments)), -np.inf)
        scores[:, self._columns] = decision
        return scores


METHODS = (PrototypeClassifier, LinearSvmClassifier)


def fit_instant_model(version: str, departments: Sequence[str], train: tuple[Sequence[str], Sequence[str]],
                      all_labels: tuple[Sequence[str], Sequence[str]], seed_texts: Mapping[str, str],
                      evaluate: Callable[[_TfidfClassifier], dict], max_text_chars: int = 20_000,
                      serving_method: str | None = None) -> tuple[_TfidfClassifier, dict]:
    """Choose the method on the frozen split, then refit it on every label.

    Each method is fitted on the `train` (texts, labels) and scored by `evaluate` on the evaluation split; the
    best macro-F1 wins (the prototypes on a tie or when there is nothing to evaluate on: the safer bet with few
    labels). The `serving_method` (the method of the version serving now) stays unless another beats its macro-F1
    by more than NEAR_TIE_F1. The chosen method is then refitted on `all_labels`, the usual final refit after model
    selection: the report's numbers stay those of a model that never saw the split. Returns (classifier, report)."""
    report: dict = {}
    for method in METHODS:
        report[method.method] = evaluate(method(version, departments, max_text_chars).fit(*train, seed_texts))

    def f1(method) -> float:
        score = report[method.method].get("macro_f1")
        return -1.0 if score is None else score

    chosen = max(METHODS, key=f1)  # the first of equals: the prototypes
    serving = next((m for m in METHODS if m.method == serving_method), None)
    if serving is not None and f1(chosen) <= f1(serving) + NEAR_TIE_F1:
        chosen = serving
    report["chosen"] = chosen.method
    return chosen(version, departments, max_text_chars).fit(*all_labels, seed_texts), report


def fit_on_labels(version: str, departments: Sequence[str], labels: Sequence[StoredLabel], seed_texts: Mapping[str, str],
                  max_text_chars: int = 20_000, serving_method: str | None = None,
                  routing: AutoRouting | None = None, max_train_labels: int | None = None) -> tuple[_TfidfClassifier, dict]:
    """The instant model as the service fits it from its label store: the method is chosen on the labels' frozen
    evaluation split (the `serving_method` kept on near-ties), then refitted on every label of the departments
    served. Returns (classifier, metrics).

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
        evaluate=lambda candidate: evaluate(candidate, held_out, routing), max_text_chars=max_text_chars, serving_method=serving_method)
    metrics = {**report[clf.method], "method": clf.method, "train_labels": len(train), "labels": stored, "fitted_labels": len(labels),
               "methods": {m: {k: report[m].get(k) for k in ("accuracy", "macro_f1", "n")} for m in report if m != "chosen"}}
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

