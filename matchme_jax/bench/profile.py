r"""The top ops by time in a `jax.profiler` trace, per device timeline, as a markdown table.

    python -m matchme_jax.bench --profile_dir=P ...     # traces 3 calls per row into P/<row>/
    python -m matchme_jax.bench.profile P/0 --top=25 [--json=summary.json]

Reads the Perfetto trace (`perfetto_trace.json.gz`, Chrome trace events) that
`jax.profiler.trace(..., create_perfetto_trace=True)` writes, finds every timeline ("thread")
of the device processes (`/device:GPU:0`: its CUDA streams, and XLA's op and module lines where
the profiler adds them; on a CPU-only trace, the host's), and sums the duration of the events
of each name on each timeline. Summed per timeline, never across them: the op line and the
stream line of one GPU cover the same time twice. Needs nothing but the standard library.
"""

import argparse
import collections
import gzip
import json
from pathlib import Path


def find_trace(path: Path) -> Path:
    """The newest `perfetto_trace.json.gz` under `path` (or `path` itself)."""
    if path.is_file():
        return path
    traces = sorted(path.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"No perfetto_trace.json.gz under {path}: trace with --profile_dir")
    return traces[-1]


def summarise(events: list[dict], top: int = 25) -> list[dict]:
    """Per device timeline: its busy time and its `top` event names by summed duration (us)."""
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[e["pid"], e["tid"]] = e["args"]["name"]
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if not devices:  # a CPU-only trace: XLA runs on the host's threads
        devices = set(processes)
    durations = collections.defaultdict(collections.Counter)
    counts = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in devices:
            line = (e["pid"], e.get("tid"))
            durations[line][e["name"]] += float(e.get("dur", 0.0))
            counts[line][e["name"]] += 1
    timelines = []
    for line, by_name in durations.items():
        busy = sum(by_name.values())
        timelines.append(
            {
                "process": processes.get(line[0], str(line[0])),
                "timeline": threads.get(line, str(line[1])),
                "busy_us": busy,
                "events": sum(counts[line].values()),
                "top": [
                    {"name": name, "us": us, "share": us / busy, "count": counts[line][name]}
                    for name, us in by_name.most_common(top)
                ],
            }
        )
    return sorted(timelines, key=lambda t: -t["busy_us"])


def markdown(timelines: list[dict]) -> str:
    lines = []
    for t in timelines:
        lines += [
            f"### {t['process']} / {t['timeline']}: {t['busy_us'] / 1e3:.1f} ms busy, "
            f"{t['events']} events",
            "",
            "| op | ms | share % | count |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{op['name'][:90]}` | {op['us'] / 1e3:.2f} | {100 * op['share']:.1f} | "
            f"{op['count']} |"
            for op in t["top"]
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path, help="A --profile_dir row folder or a trace file.")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    path = find_trace(args.trace)
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    timelines = summarise(events, args.top)
    if args.json:
        args.json.write_text(json.dumps({"trace": str(path), "timelines": timelines}, indent=1))
    print(f"{path}\n\n{markdown(timelines)}")


if __name__ == "__main__":
    main()
