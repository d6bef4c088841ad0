"""Regenerate the labeling config from a department catalog.

    python -m annotation_config                          # annotation_config/catalog.json -> labeling_config.xml
    python -m annotation_config --catalog my.csv --out my_config.xml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from annotation_config.catalog import DEFAULT_CATALOG, DEFAULT_LABELING_CONFIG, CatalogError, load_catalog
from annotation_config.labeling_config import render_labeling_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m annotation_config",
        description="Generate the Label Studio labeling config (the model's top-k suggestions, every department "
        "grouped with a filter, an optional rationale) from a department catalog (.json or .csv with name,duties,aliases[,group]).",
    )
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG, help="catalog file (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_LABELING_CONFIG, help="where to write the XML (default: %(default)s)")
    parser.add_argument("--text-field", default="text", help="task data key holding the ticket text (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=3, choices=range(1, 10), metavar="K",
                        help="suggestions shown per ticket, hotkeys 1..K (default: %(default)s; set SUGGESTIONS_TOP_K to the same)")
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(render_labeling_config(catalog, args.text_field, args.top_k), encoding="utf-8")
    print(f"wrote {args.out} with {len(catalog.departments)} departments from {args.catalog}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
