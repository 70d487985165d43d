r"""Merges benchmark JSON files into one per card and prints their rows as a markdown table.

    python -m matchme_jax.bench.collect --out_dir=benchmarks/results A.json B.json ...

Writes `<out_dir>/<card>.json` (card: the device kind, e.g. nvidia-h100-80gb-hbm3) holding the
environment of the first file and the rows of all of them, in order. Files whose run failed
before its first row (no JSON, or no rows) are skipped and named on stderr.
"""

import argparse
import json
import re
import sys
from pathlib import Path


def card_slug(device_kind: str) -> str:
    """A file name for a device kind: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-") or "unknown"


def merge(results: list[dict]) -> dict:
    """One result with every row of `results`, which must come from one kind of device."""
    if not results:
        raise ValueError("No benchmark results to merge: every run failed before its first row.")
    kinds = {r["environment"]["device_kind"] for r in results}
    if len(kinds) > 1:
        raise ValueError(f"Results from different devices ({sorted(kinds)}) go in separate files.")
    merged = {k: v for k, v in results[0].items() if k != "rows"}
    merged["rows"] = [row for r in results for row in r["rows"]]
    return merged


def _number(value, scale: float = 1.0, style: str = ",.1f") -> str:
    return "-" if value is None else format(value / scale, style)


def markdown_table(result: dict) -> str:
    """The rows as a markdown table (pairs/s, GFLOP per pair, MFU in percent)."""
    lines = [
        "| mode | backbone | precision | attention | workers | batch | pairs/s | GFLOP/pair "
        "| MFU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        mfu = row.get("mfu")
        numbers = (
            f"failed: {row['error'][:60]}"
            if "error" in row
            else (
                f"{_number(row['pairs_per_s'])} | "
                f"{_number(row.get('flops_per_pair'), 1e9, '.3g')} | "
                f"{_number(None if mfu is None else 100 * mfu)}"
            )
        )
        lines.append(
            f"| {row['mode']} | {row.get('backbone', '-')} | {row.get('precision', '-')} | "
            f"{row.get('attention', '-')} | {row.get('num_workers', '-')} | "
            f"{row['batch_size']} | {numbers} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    results = []
    for path in args.files:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        if result.get("rows"):
            results.append(result)
        else:
            print(f"skipped {path}: no rows", file=sys.stderr)
    merged = merge(results)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{card_slug(merged['environment']['device_kind'])}.json"
    out.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {out}\n\n{markdown_table(merged)}")


if __name__ == "__main__":
    main()
