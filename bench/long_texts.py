"""What a refit costs on long random texts (issue 15, item 7; RELIABILITY.md).

    python -m bench.long_texts 30

fits each instant-model method on N labels of 19,999 random CJK characters (just under MAX_TEXT_CHARS) and prints
the fit time, one /predict of such a text, and the process's peak RSS so far.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from annotation_config.catalog import load_catalog
from learning.instant_model import METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", type=int, help="how many long labels")
    args = parser.parse_args(argv)
    catalog = load_catalog()
    rng = np.random.default_rng(0)
    texts = ["".join(map(chr, rng.integers(0x4E00, 0x9FA5, 19_999))) for _ in range(args.labels)]
    labels = [catalog.names[i % 5] for i in range(args.labels)]
    for method in METHODS:
        started = time.perf_counter()
        clf = method("bench", catalog.names, 20_000).fit(texts, labels, catalog.seed_texts())
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        clf.predict_proba(texts[:1])
        predicted = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{method.method:>9}: fit {fitted:.1f} s, one /predict {predicted * 1000:.0f} ms, peak RSS {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
