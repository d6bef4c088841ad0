"""Screen for BENCHMARKS section 9 (eighth pass): the default queue order with Cluster-Margin's diversified batches
(Citovsky et al. 2021, "Batch Active Learning at Scale", NeurIPS) in place of plain margin once the model is mature.

Not in the product: it replays the one arm on one row and seed, and its curve is compared point by point with the
stored fifth pass (``bench/results/learning_fifth_pass.json``), whose young phase it repeats exactly (the typical
picks draw the same seeds; the mature phase draws nothing from the replay's generator).

    python -m bench.screens.cluster_margin dalian_gov-k20 0 --out cluster_margin_screen_dalian_gov-k20_s0.json
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

NAME = "cluster-margin"
CANDIDATES_PER_PICK = 3  # Cluster-Margin's k_m / k_t: the lowest margins it diversifies over


class TypicalThenClusterMargin(strategies.TypicalThenMargin):
    """Once mature: the CANDIDATES_PER_PICK x TYPICAL_BATCH smallest margins, dealt round-robin over TYPICAL_BATCH
    k-means clusters of the unlabelled tickets, smallest clusters first; then the rest by margin."""

    def rank(self, probs, rng=None, labelled=0, pool=None):
        if pool is None or not strategies.mature(labelled, probs.shape[1]):
            return super().rank(probs, rng, labelled, pool)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("row", help="a bench.learning row id, e.g. dalian_gov-k20")
    parser.add_argument("seed", type=int)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of the three dev sets")
    parser.add_argument("--out", type=Path, required=True, help="JSON list of the arm's curve points")
    args = parser.parse_args()
    strategies.STRATEGIES[NAME] = TypicalThenClusterMargin
    paths = [args.data / name / "dev.jsonl" for name in ("shanghai_xinfang", "dalian_gov", "tipdm2020c")]
    _, path, min_per_label = next(spec for spec in row_specs(paths, 20) if spec[0] == args.row)
    texts, labels = load(path, min_per_label)
    train, test = folds_of(labels, 5)[0]
    pool = Tickets([texts[i] for i in train], [labels[i] for i in train])
    evaluation = Tickets([texts[i] for i in test], [labels[i] for i in test])
    points = simulate(pool, evaluation, sorted(set(labels)), [NAME], [args.seed], Schedule(100, 50, 800, 100))
    args.out.write_text(json.dumps([asdict(point) for point in points]))


if __name__ == "__main__":
    main()
