"""How far `token_count.estimate` is from the truth on the shipped corpus (`benchmarks/token_corpus`).

Why it exists: `/v1/messages/count_tokens` answers an estimate, and an estimate is only honest with its error
beside it. The corpus's `samples.jsonl` holds the texts (prose in five languages, code in nine, JSON, Chinese,
Japanese and Korean, numbers and URLs, chat transcripts with tool definitions, markdown); `counts.jsonl`
their true counts by Claude's legacy tokenizer (how they were made: `true_counts` in the corpus folder).
The unit tests hold the estimate to the figures this prints.

Usage::

    python benchmarks/token_count_error.py [--json]

prints the mean absolute percentage error, the worst sample and the mean per kind of text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clexproxy.protocols.token_count import estimate

CORPUS = Path(__file__).resolve().parent / "token_corpus"


def load() -> list[dict[str, Any]]:
    """The corpus samples, each with its true `tokens`."""
    counts = {}
    with (CORPUS / "counts.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            counts[row["id"]] = row["tokens"]
    samples = []
    with (CORPUS / "samples.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            sample = json.loads(line)
            sample["tokens"] = counts[sample["id"]]
            samples.append(sample)
    return samples


def measure(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst absolute % error over `samples`, and the mean per kind."""
    errors = []
    kinds: dict[str, list[float]] = {}
    for sample in samples:
        error = abs(estimate(sample["text"]) - sample["tokens"]) / sample["tokens"] * 100
        errors.append((error, sample["id"]))
        kinds.setdefault(sample["kind"], []).append(error)
    worst, worst_id = max(errors)
    return {
        "samples": len(samples),
        "mean_abs_pct_error": round(sum(error for error, _ in errors) / len(errors), 2),
        "worst_pct_error": round(worst, 2),
        "worst_sample": worst_id,
        "by_kind": {kind: round(sum(values) / len(values), 2) for kind, values in sorted(kinds.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    result = measure(load())
    if parser.parse_args().json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{result['samples']} samples: mean absolute error {result['mean_abs_pct_error']} %, "
          f"worst {result['worst_pct_error']} % ({result['worst_sample']})")
    for kind, error in result["by_kind"].items():
        print(f"  {kind:10} {error:6.2f} %")


if __name__ == "__main__":
    main()
