r"""Merges benchmark JSON files into one per card and prints their rows as a markdown table.

    python -m matchme_jax.bench.collect --out_dir=benchmarks/results A.json B.json ...

Writes `<out_dir>/<card><suffix>.json` (card: the device kind, e.g. nvidia-h100-80gb-hbm3)
holding the environment of the first of our (JAX) files and the rows of all of them, in order.
Files from benchmarks/torch_cats_bench.py (the official PyTorch CATs; `environment.framework` is
"pytorch") join the same `rows`, and their environment is kept as `environment_pytorch`; the
printed tables then add ours/PyTorch per matching row. Files whose run failed before its first
row (no JSON, or no rows) are skipped and named on stderr.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from matchme_jax import atomic


def card_slug(device_kind: str) -> str:
    """A file name for a device kind: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-") or "unknown"


def _framework(result: dict) -> str:
    return result["environment"].get("framework", "jax")


def merge(results: list[dict]) -> dict:
    """One result with every row of `results`, which must come from one kind of device."""
    ours = [r for r in results if _framework(r) == "jax"]
    if not ours:
        raise ValueError("No benchmark results to merge: every run failed before its first row.")
    kinds = {card_slug(r["environment"]["device_kind"]) for r in results}
    if len(kinds) > 1:
        raise ValueError(f"Results from different devices ({sorted(kinds)}) go in separate files.")
    merged = {k: v for k, v in ours[0].items() if k != "rows"}
    for other in results:
        if _framework(other) != "jax":
            merged.setdefault(f"environment_{_framework(other)}", other["environment"])
    merged["rows"] = [row for r in results for row in r["rows"]]
    return merged


def _key(row: dict) -> tuple:
    """What makes a JAX row and a PyTorch row the same measurement."""
    return (
        row.get("model", "cats"),
        row["mode"],
        row["batch_size"],
        row.get("precision"),
        row.get("backbone"),
    )


def ratios(result: dict) -> list[dict]:
    """ours/PyTorch pairs/s for every PyTorch row with a JAX row of the same measurement.

    The JAX row with the default attention ("auto") is the one compared; rows that failed on
    either side are left out.
    """
    ours = {
        _key(row): row
        for row in result["rows"]
        if row.get("framework", "jax") == "jax"
        and row.get("attention") == "auto"
        and "pairs_per_s" in row
    }
    table = []
    for row in result["rows"]:
        if row.get("framework") != "pytorch" or "pairs_per_s" not in row:
            continue
        jax_row = ours.get(_key(row))
        if jax_row:
            table.append(
                {
                    "mode": row["mode"],
                    "backbone": row.get("backbone"),
                    "precision": row["precision"],
                    "batch_size": row["batch_size"],
                    "jax_pairs_per_s": jax_row["pairs_per_s"],
                    "pytorch_pairs_per_s": row["pairs_per_s"],
                    "ratio": jax_row["pairs_per_s"] / row["pairs_per_s"],
                }
            )
    return table


def _number(value, scale: float = 1.0, style: str = ",.1f") -> str:
    return "-" if value is None else format(value / scale, style)


def _planned_bytes(row: dict) -> float | None:
    return (row.get("memory_planned") or {}).get("total")


def markdown_table(result: dict) -> str:
    """The rows as a markdown table (pairs/s, GFLOP per pair, MFU in percent, memory in GiB),
    then ours/PyTorch for the rows measured by both."""
    lines = [
        "| framework | model | mode | backbone | precision | attention | workers | batch "
        "| pairs/s | GFLOP/pair | MFU % | peak GiB | planned GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        mfu = row.get("mfu")
        numbers = (
            f"failed: {row['error'][:60]} | | | |"
            if "error" in row
            else (
                f"{_number(row.get('pairs_per_s'))} | "
                f"{_number(row.get('flops_per_pair'), 1e9, '.3g')} | "
                f"{_number(None if mfu is None else 100 * mfu)} | "
                f"{_number(row.get('peak_bytes'), 2**30, '.2f')} | "
                f"{_number(_planned_bytes(row), 2**30, '.2f')}"
            )
        )
        lines.append(
            f"| {row.get('framework', 'jax')} | {row.get('model', '-')} | {row['mode']} | "
            f"{row.get('backbone', '-')} | {row.get('precision', '-')} | "
            f"{row.get('attention', '-')} | {row.get('num_workers', '-')} | "
            f"{row['batch_size']} | {numbers} |"
        )
    compared = ratios(result)
    if compared:
        lines += [
            "",
            "| mode | backbone | precision | batch | ours pairs/s | PyTorch pairs/s "
            "| ours/PyTorch |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['mode']} | {r['backbone'] or '-'} | {r['precision']} | {r['batch_size']} | "
            f"{_number(r['jax_pairs_per_s'])} | {_number(r['pytorch_pairs_per_s'])} | "
            f"{r['ratio']:.2f} |"
            for r in compared
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("--suffix", default="", help="Appended to the card's file name.")
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
    out = args.out_dir / f"{card_slug(merged['environment']['device_kind'])}{args.suffix}.json"
    out.write_text(atomic.to_json(merged, indent=1) + "\n")
    print(f"wrote {out}\n\n{markdown_table(merged)}")


if __name__ == "__main__":
    main()
