"""Screens for BENCHMARKS section 9 (eighth pass): the default queue order with another margin phase once the model
is mature, its young phase (TypiClust's typical picks) unchanged.

* ``cluster-margin``: Cluster-Margin's diversified batches (Citovsky et al. 2021, "Batch Active Learning at Scale",
  NeurIPS): the CANDIDATES_PER_PICK x TYPICAL_BATCH smallest margins, dealt round-robin over TYPICAL_BATCH k-means
  clusters of the unlabelled tickets, smallest clusters first; then the rest by margin.
* ``log-margin``: the margin between the two largest log-probabilities, i.e. between the two largest decision scores
  (the softmax's temperature is the same for every ticket): the SVM's own margin (Tong & Koller 2001), which does not
  favour tickets whose probability is spread over many departments as the probability margin does.

Not in the product: it replays the one arm on one row and seed, and its curve is compared point by point with the
stored fifth pass (``bench/results/learning_fifth_pass.json``), whose young phase it repeats exactly (the typical
picks draw the same seeds; these margin phases draw nothing from the replay's generator).

    python -m bench.screens.margin_phase cluster-margin dalian_gov-k20 0 --out cluster_margin_screen_dalian_gov-k20_s0.json
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.instant_model import load
from bench.learning import folds_of, row_specs
from learning import strategies
from tools.simulation import Schedule, Tickets, simulate

CANDIDATES_PER_PICK = 3  # Cluster-Margin's k_m / k_t: the lowest margins it diversifies over


def cluster_margin(probs: np.ndarray, pool: strategies.Pool) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    order = strategies.Margin().rank(probs)
    candidates = order[: CANDIDATES_PER_PICK * strategies.TYPICAL_BATCH]
    vectors = strategies.embed([*pool.labelled, *pool.unlabelled])[len(pool.labelled):]
    cluster = MiniBatchKMeans(n_clusters=min(strategies.TYPICAL_BATCH, len(vectors)), random_state=0, n_init=1,
                              batch_size=1024).fit_predict(vectors)
    sizes = np.bincount(cluster)
    of = cluster[candidates]
    round_number = np.array([np.count_nonzero(of[:i] == c) for i, c in enumerate(of)], dtype=int)
    dealt = candidates[np.lexsort((np.arange(len(candidates)), sizes[of], round_number))]
    return np.concatenate([dealt, order[len(candidates):]])


def log_margin(probs: np.ndarray, pool: strategies.Pool) -> np.ndarray:
    top_two = np.sort(np.log(np.maximum(probs, np.finfo(float).tiny)), axis=1)[:, -2:]
    return np.argsort(top_two[:, 1] - top_two[:, 0], kind="stable")


MARGIN_PHASES = {"cluster-margin": cluster_margin, "log-margin": log_margin}


def typical_then(margin_phase):
    class TypicalThenOther(strategies.TypicalThenMargin):
        def rank(self, probs, rng=None, labelled=0, pool=None):
            if pool is None or not strategies.mature(labelled, probs.shape[1]):
                return super().rank(probs, rng, labelled, pool)
            return margin_phase(probs, pool)

    return TypicalThenOther


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=MARGIN_PHASES)
    parser.add_argument("row", help="a bench.learning row id, e.g. dalian_gov-k20")
    parser.add_argument("seed", type=int)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of the three dev sets")
    parser.add_argument("--out", type=Path, required=True, help="JSON list of the arm's curve points")
    args = parser.parse_args()
    strategies.STRATEGIES[args.variant] = typical_then(MARGIN_PHASES[args.variant])
    paths = [args.data / name / "dev.jsonl" for name in ("shanghai_xinfang", "dalian_gov", "tipdm2020c")]
    _, path, min_per_label = next(spec for spec in row_specs(paths, 20) if spec[0] == args.row)
    texts, labels = load(path, min_per_label)
    train, test = folds_of(labels, 5)[0]
    pool = Tickets([texts[i] for i in train], [labels[i] for i in train])
    evaluation = Tickets([texts[i] for i in test], [labels[i] for i in test])
    points = simulate(pool, evaluation, sorted(set(labels)), [args.variant], [args.seed], Schedule(100, 50, 800, 100))
    args.out.write_text(json.dumps([asdict(point) for point in points]))


if __name__ == "__main__":
    main()
