"""Writes `counts.jsonl`: each sample's TRUE token count by Claude's tokenizer (the `tokenizer.json` the anthropic SDK
shipped up to release 0.34.2), the truth `token_count_error` measures the estimate against.

Not run by tests (it needs the `tokenizers` package, not a dependency). To redo:
    pip download anthropic==0.34.2 --no-deps && unzip the wheel's anthropic/tokenizer.json
    python true_counts.py path/to/tokenizer.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent


def main() -> None:
    tokenizer = Tokenizer.from_file(sys.argv[1])
    with (HERE / "samples.jsonl").open(encoding="utf-8") as samples, (HERE / "counts.jsonl").open("w") as out:
        for line in samples:
            sample = json.loads(line)
            tokens = len(tokenizer.encode(sample["text"]).ids)
            out.write(json.dumps({"id": sample["id"], "tokens": tokens, "tokenizer": "claude-legacy-0.34.2"}) + "\n")


if __name__ == "__main__":
    main()
