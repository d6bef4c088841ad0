"""Query strategies: which unlabelled tickets annotators should label next.

Every strategy ranks the rows of a probability matrix (tickets x departments, as a ``Classifier`` returns it) and
answers row indices, most informative first. Ties go to the lower index, so a ranking is reproducible; only
``Random`` and the typical and covering picks (their k-means seed) draw from the generator they are given.

``LeastConfidence`` is what Label Studio already does for us: its uncertainty sampling sorts tasks on the
prediction score, which is our top-1 probability. The others need the whole distribution. ``TypicalThenMargin`` is
the service's queue order (``DEFAULT``); it also needs the number of gold labels the model was fitted on and the
pool's texts (``Pool``). ``RandomThenMargin`` and ``CoverThenMargin`` are the same switch with random order or
ProbCover's covering before it, to measure what the typical picks add.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Pool:
    """What a strategy may look at besides the model's answers: the texts of the unlabelled tickets (in the order of
    the probability rows) and of those already labelled."""
    unlabelled: Sequence[str]
    labelled: Sequence[str]


class QueryStrategy(Protocol):
    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray: ...


@runtime_checkable
class ColdStart(Protocol):
    """A strategy that can also choose the first tickets, before there is a model to ask (``TypicalThenMargin``);
    the others start from a random batch."""

    def first(self, pool: Pool, departments: int, rng: np.random.Generator | None = None) -> np.ndarray: ...


def _ascending(values: np.ndarray) -> np.ndarray:
    return np.argsort(values, kind="stable")


class LeastConfidence:
    """Lowest top-1 probability first."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray:
        return _ascending(probs.max(axis=1))


class Margin:
    """Smallest gap between the two most likely departments first: the model hesitates between two units."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray:
        if probs.shape[1] < 2:  # one department: every ticket is equally (un)informative
            return np.arange(len(probs))
        top_two = np.sort(probs, axis=1)[:, -2:]
        return _ascending(top_two[:, 1] - top_two[:, 0])


class Entropy:
    """Highest entropy first: probability spread over many departments."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray:
        # log(1) = 0 makes zero probabilities contribute nothing, without a log(0) warning
        entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)
        return _ascending(-entropy)


class Random:
    """The baseline every other strategy has to beat: labelling tickets in no particular order."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray:
        return (rng or np.random.default_rng()).permutation(len(probs))


class ClassBalanced:
    """The base strategy's ranking dealt out round-robin over the predicted departments, rarer ones first.

    On a long tail of small departments a plain uncertainty ranking is dominated by the few large units the
    model confuses with each other; the small ones never get a label and are never learnt. Here each round takes
    the next-best candidate of every predicted department, so a batch covers as many departments as it can."""

    def __init__(self, base: QueryStrategy):
        self.base = base

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray:
        order = self.base.rank(probs, rng, labelled, pool)
        predicted = probs.argmax(axis=1)[order]
        seat_in_round = np.argsort(np.argsort(np.bincount(predicted, minlength=probs.shape[1]), kind="stable"), kind="stable")
        round_number = np.empty(len(order), dtype=int)
        taken = np.zeros(probs.shape[1], dtype=int)
        for position, department in enumerate(predicted):
            round_number[position] = taken[department]
            taken[department] += 1
        return order[np.lexsort((seat_in_round[predicted], round_number))]


# When margin sampling starts to pay, after typical picks: 5-seed replays on the dev sets (BENCHMARKS section 9).
# Switching at 4 labels a unit instead of 8 raised Shanghai k = 20 (57 units, switch at 300 instead of 456) by 1-3
# points from 400 to 800 labels; 3 a unit (switch at 200) was 1 point lower again. A 200-label floor on Dalian k = 20
# (30 units) was 1.4 points ahead at 300 labels and within 0.7 of the 300 floor from 400 to 800, so 300 stays.
MATURE_LABELS_PER_DEPARTMENT = 4
MATURE_MIN_LABELS = 300


def maturity(departments: int) -> int:
    """The gold labels from which a model over `departments` units knows enough for its doubts to mean something."""
    return max(MATURE_MIN_LABELS, MATURE_LABELS_PER_DEPARTMENT * departments)


def mature(labelled: int, departments: int) -> bool:
    return labelled >= maturity(departments)


class RandomThenMargin:
    """Random order while the model is young, margin sampling once it is ``mature``.

    At small budgets uncertainty sampling loses to random order, at large ones it wins (Hacohen, Dekel & Weinshall
    2022, "Active learning on a budget: opposite strategies suit high and low budgets"): a model fitted on a few
    labels per department is confidently wrong, and its smallest margins point at tickets its errors make look
    hard. Until maturity this draws exactly what ``Random`` draws from the same generator, so it cannot trail it
    there."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray:
        if mature(labelled, probs.shape[1]):
            return Margin().rank(probs, rng, labelled)
        return Random().rank(probs, rng, labelled)


# TypiClust's neighbourhood for typicality (Hacohen et al. 2022 use 20) and the size of the ticket representation.
TYPICALITY_NEIGHBOURS = 20
# The labels an order plans for before it is recomputed (TypiClust's B: |L| + B clusters). The replays re-order every
# 100 labels; 5-seed screening on the dev sets put |L| + 100 clusters 3-5 accuracy points above a fixed
# maturity-sized clustering at 100-200 labels (Shanghai and Dalian k = 20) and level with it from 300 on.
TYPICAL_BATCH = 100
EMBEDDING_DIMENSIONS = 100


def embed(texts: Sequence[str], seed: int = 0) -> np.ndarray:
    """Tickets as unit vectors for clustering: character 1-3-gram TF-IDF (the instant model's features) reduced by a
    truncated SVD, so that k-means and nearest neighbours work on a small dense matrix (tickets x 100), never on
    tickets x n-grams."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.preprocessing import normalize

    from learning.instant_model import tfidf_vectorizer

    try:
        features = tfidf_vectorizer(len(texts), dtype=np.float32).fit_transform(texts)
    except ValueError:  # no n-gram in enough tickets (empty or all-different texts): nothing tells them apart
        return np.ones((len(texts), 1), dtype=np.float32)
    dimensions = min(EMBEDDING_DIMENSIONS, features.shape[1] - 1, len(texts) - 1)
    if dimensions < 1:
        return np.ones((len(texts), 1), dtype=np.float32)
    return normalize(TruncatedSVD(dimensions, random_state=seed).fit_transform(features))


def typical_order(pool: Pool, clusters: int, seed: int = 0) -> np.ndarray:
    """The unlabelled tickets in TypiClust's order (Hacohen, Dekel & Weinshall 2022, "Active learning on a budget",
    ICML): the pool, labelled tickets included, is cut into `clusters` k-means clusters; the next pick is the most
    typical unlabelled ticket (highest inverse mean distance to its nearest neighbours) of the largest cluster with
    the fewest labelled tickets. Sorting on (labelled tickets in the cluster + the ticket's typicality rank inside it,
    cluster size) gives the same order as picking one at a time. Typicality is measured over the whole pool rather
    than inside each cluster."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.neighbors import NearestNeighbors

    unlabelled = len(pool.unlabelled)
    vectors = embed([*pool.labelled, *pool.unlabelled], seed)
    clusters = max(1, min(clusters, len(vectors)))
    cluster = MiniBatchKMeans(n_clusters=clusters, random_state=seed, n_init=1, batch_size=1024).fit_predict(vectors)
    neighbours = min(TYPICALITY_NEIGHBOURS, len(vectors) - 1)
    if neighbours > 0:
        distances, _ = NearestNeighbors(n_neighbors=neighbours + 1).fit(vectors).kneighbors(vectors)
        typicality = 1.0 / (distances[:, 1:].mean(axis=1) + 1e-9)
    else:
        typicality = np.ones(len(vectors))
    sizes = np.bincount(cluster, minlength=clusters)
    covered = np.bincount(cluster[: len(pool.labelled)], minlength=clusters)
    candidates = cluster[len(pool.labelled):]
    by_cluster = np.lexsort((np.arange(unlabelled), -typicality[len(pool.labelled):], candidates))
    rank_inside = np.empty(unlabelled, dtype=int)
    starts = np.concatenate([[0], np.cumsum(np.bincount(candidates, minlength=clusters))[:-1]])
    rank_inside[by_cluster] = np.arange(unlabelled) - starts[candidates[by_cluster]]
    # Equal on both, the more typical ticket first: with as many clusters as tickets (a small pool) the order is
    # typicality alone.
    return np.lexsort((np.arange(unlabelled), -typicality[len(pool.labelled):], -sizes[candidates], covered[candidates] + rank_inside))


def typical_clusters(labelled: int, departments: int) -> int:
    """How many clusters the young order cuts the pool into: TypiClust's |L| + B, at most the labels at maturity."""
    return min(maturity(departments), labelled + TYPICAL_BATCH)


class TypicalThenMargin:
    """TypiClust's typical picks while the model is young, margin sampling once it is ``mature``.

    Hacohen et al. 2022: at small budgets the best labels are typical tickets from regions the labels do not cover
    yet, at large ones the uncertain tickets. As in the paper, each order cuts the pool into as many clusters as the
    labels so far plus the next TYPICAL_BATCH (at most as many as the labels at maturity), so the next batch takes the
    most typical ticket of each of the largest clusters no label covers. It also picks the very first tickets
    (``first``), before any model exists. Without the pool's texts (a caller that has only probabilities) it falls
    back to random order."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0,
             pool: Pool | None = None) -> np.ndarray:
        if mature(labelled, probs.shape[1]):
            return Margin().rank(probs, rng, labelled)
        if pool is None:
            return Random().rank(probs, rng, labelled)
        return self.first(pool, probs.shape[1], rng)

    def first(self, pool: Pool, departments: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The order before any model exists (no probabilities needed): the typical picks, as the service's queue
        gives them to a project with no gold labels yet."""
        return self.young_order(pool, departments, seed=0 if rng is None else int(rng.integers(2**31)))

    @staticmethod
    def young_order(pool: Pool, departments: int, seed: int) -> np.ndarray:
        return typical_order(pool, typical_clusters(len(pool.labelled), departments), seed)


# ProbCover's ball radius (Yehuda et al. 2022): the largest of RADII at which PURITY of the tickets' balls hold only
# tickets of their own k-means cluster (one cluster a department), as in the paper. Unit vectors lie within 2.
PURITY = 0.95
RADII = np.round(np.arange(1.2, 0.0, -0.05), 2)
# Covering compares every pair of tickets, so it looks at a seeded sample of at most this many labelled and as many
# unlabelled tickets (a byte a pair: 64 MB at the cap's 8,000 tickets), the rest following in seeded random order. The
# young phase takes at most maturity labels (300 to 4 a department) from it; the dev sets' pools (at most 3,623)
# are covered whole.
COVER_POOL = 4000
_ROWS = 1024  # rows of the similarity matrix computed at once


def _sample(count: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(count) if count <= COVER_POOL else np.sort(rng.choice(count, COVER_POOL, replace=False))


def _balls(vectors: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Which tickets lie in which ticket's ball (symmetric, self included), at the radius ProbCover chooses."""
    nearest_other = np.empty(len(vectors))
    for start in range(0, len(vectors), _ROWS):
        similarity = vectors[start:start + _ROWS] @ vectors.T
        other = cluster[start:start + _ROWS, None] != cluster[None, :]
        nearest_other[start:start + _ROWS] = np.where(other, similarity, -1.0).max(axis=1)
    nearest_other = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * nearest_other))  # cosine similarity -> distance
    radius = next((r for r in RADII if (nearest_other >= r).mean() >= PURITY), RADII[-1])
    return np.vstack([vectors[start:start + _ROWS] @ vectors.T > 1.0 - radius**2 / 2.0
                      for start in range(0, len(vectors), _ROWS)])


def cover_order(pool: Pool, departments: int, seed: int = 0) -> np.ndarray:
    """The unlabelled tickets in ProbCover's order (Yehuda, Dekel, Hacohen & Weinshall 2022, "Active learning through a
    covering lens", NeurIPS): every ticket has a ball of a radius that still holds one k-means cluster (``_balls``);
    the labelled tickets' balls count as covered, and each next pick is the ticket whose ball covers the most tickets
    no pick covers yet, ties to a seeded random one. Once every ticket is covered, the rest follow in seeded random
    order. Where the pool is larger than COVER_POOL, the covering looks at a seeded sample of it. On TF-IDF vectors the
    balls hold two tickets or so, and most picks after the first hundred are such ties (BENCHMARKS section 9)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    labelled, unlabelled = _sample(len(pool.labelled), rng), _sample(len(pool.unlabelled), rng)
    # Most picks tie (balls of two tickets or so); shuffled, a tie goes to a seeded random ticket instead of the
    # pool's file order, which in an export is often grouped by department (BENCHMARKS section 9, sixth pass).
    unlabelled = unlabelled[rng.permutation(len(unlabelled))]
    vectors = embed([*(pool.labelled[i] for i in labelled), *(pool.unlabelled[i] for i in unlabelled)], seed)
    clusters = max(1, min(departments, len(np.unique(vectors, axis=0))))  # identical tickets make one cluster
    balls = _balls(vectors, KMeans(clusters, n_init=1, random_state=seed).fit_predict(vectors))
    covered = balls[: len(labelled)].any(axis=0)
    candidates = balls[len(labelled):]
    degree = (candidates & ~covered).sum(axis=1)
    picks: list[int] = []
    while len(degree) and degree.max() > 0:  # each ticket is newly covered once: O(tickets^2) in all
        best = int(degree.argmax())
        picks.append(best)
        newly = candidates[best] & ~covered
        covered |= newly
        degree -= candidates[:, newly].sum(axis=1)
    chosen = unlabelled[picks]
    rest = np.setdiff1d(np.arange(len(pool.unlabelled)), chosen)
    return np.concatenate([chosen, rng.permutation(rest)]).astype(int)


class CoverThenMargin(TypicalThenMargin):
    """ProbCover's picks while the model is young (``cover_order``), margin sampling once it is ``mature``; the same
    switch as ``TypicalThenMargin``, whose typical picks it replaces. Yehuda et al. 2022 find covering ahead of
    TypiClust at the smallest budgets, where a department has a handful of labels. Not the default: on the dev sets
    it is ahead of random order at every budget, but once its picks stop covering two tickets or more (250 or so
    picks) they are random ones, and it falls behind the typical picks on four rows of five (BENCHMARKS section 9,
    sixth and seventh passes)."""

    young_order = staticmethod(cover_order)


UNCERTAINTY = {"least-confidence": LeastConfidence, "margin": Margin, "entropy": Entropy}


def _balanced(base: Callable[[], QueryStrategy]) -> Callable[[], ClassBalanced]:
    return lambda: ClassBalanced(base())


STRATEGIES: dict[str, Callable[[], QueryStrategy]] = {
    "random": Random,
    **UNCERTAINTY,
    **{f"balanced-{name}": _balanced(base) for name, base in UNCERTAINTY.items()},
    "random-then-margin": RandomThenMargin,
    "typical-then-margin": TypicalThenMargin,
    "cover-then-margin": CoverThenMargin,
}
DEFAULT = "typical-then-margin"  # the order the service gives Label Studio's queue (backend/annotator_view.py)


def strategy(name: str) -> QueryStrategy:
    """The strategy called `name` on the command line."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown query strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
