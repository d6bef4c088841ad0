"""Screen for BENCHMARKS section 9 (ninth pass): which replays the ninth pass's model-choice rule moves.

Runs ``python -m bench.learning`` with the arguments after ``--`` and logs, at every refit of the instant model, the
method chosen and the one the rule before the ninth pass would have chosen from the same labels: then, with labels
enough for folds, the prototypes served whenever their projected accuracy led the SVM's unless the SVM served
already. A replay in which the two never differ is the one the old rule gave, point for point; one in which they do
is new from that refit on.

Not in the product: it wraps ``learning.instant_model.fit_instant_model`` for the one run.

    python -m bench.screens.model_choice --log choices_dalian_gov-k20_s9.jsonl -- \\
        --cells strategy --rows dalian_gov-k20 --seeds 9 --budgets 400 --out dalian_gov-k20_s9_to_400.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import learning
from learning import instant_model


def old_rule(report: dict, serving_method: str | None) -> str:
    """The method the rule before the ninth pass chose, from a ``fit_instant_model`` report. The rules differ only
    where there are folds and the SVM did not serve: then the old one went by the projection alone."""
    on = report["chosen_on"]
    if serving_method == "svm" or not on["cross_validation_rows"]:
        return report["chosen"]
    return "svm" if on["svm"] >= on["prototype"] else "prototype"


def logged(fit, log):
    def fit_and_log(*args, serving_method=None, **kwargs):
        clf, report = fit(*args, serving_method=serving_method, **kwargs)
        log.write(json.dumps({"train_labels": len(kwargs["train"][0]), "serving": serving_method, "chosen": report["chosen"],
                              "old_rule": old_rule(report, serving_method), **report["chosen_on"]}) + "\n")
        log.flush()
        return clf, report

    return fit_and_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True, help="JSON lines: one per refit, both rules' choices")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench.learning's arguments")
    args = parser.parse_args(argv)
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if "--jobs" in bench_args:  # the wrapper lives in this process: parts in processes of their own would log nothing
        parser.error("--jobs: run the screen in one process")
    with args.log.open("w", encoding="utf-8") as log:
        instant_model.fit_instant_model = logged(instant_model.fit_instant_model, log)
        status = learning.main(bench_args)
    refits = [json.loads(line) for line in args.log.read_text(encoding="utf-8").splitlines()]
    differ = [r["train_labels"] for r in refits if r["chosen"] != r["old_rule"]]
    print(f"{len(refits)} refits; the old rule chooses otherwise at {len(differ)}" + (f" (training labels {differ})" if differ else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
