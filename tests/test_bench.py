"""`python -m matchme_jax.bench` on CPU: the tiny synthetic config, every mode, the JSON."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from subprocess_env import subprocess_env
from test_config import load

from matchme_jax import bench
from matchme_jax.bench import collect, profile

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2


@pytest.fixture(scope="module")
def result(tfds_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    command = [
        sys.executable,
        "-m",
        "matchme_jax.bench",
        "--config=configs/synthetic.py:tiny",
        f"--config.dataset.data_dir={tfds_dir}",
        f"--json={out}",
        "--modes=train,annotate,input",
        f"--batch_sizes={BATCH}",
        "--precisions=bf16",
        "--backbones=frozen",
        "--steps=2",
        "--warmup=1",
        "--input_batches=2",
    ]
    proc = subprocess.run(
        command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_the_json_describes_the_machine_and_the_run(result):
    env = result["environment"]
    assert env["platform"] == "cpu" and env["device_count"] >= 1
    assert {"jax", "jaxlib", "flax", "optax", "numpy"} <= set(env["versions"])
    assert result["config"]["image_size"] == 32 and result["steps"] == 2


def test_every_mode_gives_pairs_per_second(result):
    rows = {row["mode"]: row for row in result["rows"]}
    assert set(rows) == {"train", "annotate", "input"}
    assert all("error" not in row and row["pairs_per_s"] > 0 for row in rows.values())
    train, annotate = rows["train"], rows["annotate"]
    assert (train["precision"], train["backbone"], train["batch_size"]) == ("bf16", "frozen", BATCH)
    assert {row["framework"] for row in rows.values()} == {"jax"}
    for row in (train, annotate):
        assert row["model"] == "cats"
        # XLA's plan holds at least the arguments; a CPU keeps no allocator statistics.
        planned = row["memory_planned"]
        assert planned["total"] >= planned["argument"] > 0
        assert row["peak_bytes"] is None
        assert len(row["step_times_s"]) == 2
        assert row["pairs_per_s"] == pytest.approx(BATCH / row["step_time_median_s"], rel=1e-3)
        assert row["compile_s"] > 0
        # No CPU in the peak table: no MFU rather than a made-up one.
        assert row["peak_flops_per_device"] is None and row["mfu"] is None
    # bfloat16 compute, float32 parameters and Adam moments, a finite loss.
    assert train["state_float_dtypes"] == ["float32"]
    assert train["final_loss"] > 0
    # A train step (forward, backward, update) costs more than the annotator's forward pass: by
    # the head's backward pass, as the backbone is frozen (and, mirror-invariant, runs twice in
    # both, so the step is less than twice the pass).
    assert train["flops_per_pair"] > annotate["flops_per_pair"] > 0


def test_compile_only_compiles_without_running(tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    result = bench.run(
        config,
        modes=["annotate", "input"],
        batch_sizes=[BATCH],
        precisions=["bf16"],
        backbones=["frozen"],
        steps=1,
        warmup=0,
        compile_only=True,
    )
    assert result["compile_only"] is True
    (row,) = result["rows"]  # nothing to compile in the input pipeline
    assert row["mode"] == "annotate" and "error" not in row
    assert row["compile_s"] > 0 and row["flops_per_pair"] > 0 and row["memory_planned"]["total"] > 0
    assert "pairs_per_s" not in row and "step_times_s" not in row


def test_peak_table_and_mfu_for_known_devices():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe", "fp32") == 378e12  # TF32, XLA's default
    assert bench.peak_flops("NVIDIA H200", "fp32") == 494.7e12
    assert bench.peak_flops("cpu", "bf16") is None


def test_bad_flags_raise_one_error_naming_them():
    with pytest.raises(ValueError, match="--modes=training.*--precisions=fp16"):
        bench.check_choices(["training"], ["fp16"], ["frozen"], [2], steps=2, warmup=1)
    with pytest.raises(ValueError, match="--batch_sizes"):
        bench.check_choices(["train"], ["bf16"], ["frozen"], [0], steps=2, warmup=1)


def test_collect_merges_runs_into_one_file_per_card(result, tmp_path, capsys):
    files = []
    for name in ("a", "b"):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(result))
    broken = tmp_path / "killed_before_its_first_row.json"
    broken.write_text("")
    collect.main(["--out_dir", str(tmp_path / "results"), *map(str, files), str(broken)])
    merged = json.loads((tmp_path / "results" / "cpu.json").read_text())
    assert merged["environment"] == result["environment"]
    assert merged["rows"] == result["rows"] * 2
    table = capsys.readouterr().out
    assert table.count("| train | frozen | bf16 | auto | - | 2 |") == 2
    assert collect.card_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    other = {**result, "environment": {**result["environment"], "device_kind": "NVIDIA H200"}}
    with pytest.raises(ValueError, match="different devices"):
        collect.merge([result, other])


def test_collect_puts_pytorch_rows_beside_ours_with_the_ratio(result, tmp_path, capsys):
    ours = tmp_path / "jax.json"
    ours.write_text(json.dumps(result))
    train = next(row for row in result["rows"] if row["mode"] == "train")
    torch_row = {
        **{k: train[k] for k in ("mode", "batch_size", "precision", "backbone")},
        "framework": "pytorch",
        "attention": "official",
        "pairs_per_s": train["pairs_per_s"] / 4,
    }
    theirs = tmp_path / "pytorch.json"
    environment = {"framework": "pytorch", "device_kind": "cpu", "torch": "2.11.0"}
    theirs.write_text(json.dumps({"environment": environment, "rows": [torch_row]}))
    collect.main(["--out_dir", str(tmp_path), "--suffix", ".both", str(ours), str(theirs)])
    merged = json.loads((tmp_path / "cpu.both.json").read_text())
    assert merged["environment"] == result["environment"]
    assert merged["environment_pytorch"] == environment
    assert merged["rows"] == [*result["rows"], torch_row]
    (ratio,) = collect.ratios(merged)
    assert ratio["ratio"] == pytest.approx(4.0)
    assert "| train | frozen | bf16 | 2 |" in capsys.readouterr().out


def test_profile_summary_sums_each_device_timeline_apart(tmp_path, capsys):
    def meta(kind, pid, name, tid=None):
        return {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}

    def op(pid, tid, name, dur):
        return {"ph": "X", "pid": pid, "tid": tid, "ts": 0, "dur": dur, "name": name}

    events = [
        meta("process_name", 1, "/host:CPU"),
        meta("process_name", 2, "/device:GPU:0"),
        meta("thread_name", 2, "Stream #13", tid=7),
        meta("thread_name", 2, "XLA Ops", tid=8),
        op(1, 0, "python", 1e6),  # host time is not device time
        *(op(2, 7, "conv_kernel", 300.0) for _ in range(2)),
        op(2, 7, "loop_fusion", 400.0),
        op(2, 8, "convolution.1", 1000.0),  # the same time on another line
    ]
    stream, ops = profile.summarise(events, top=1)
    assert (stream["timeline"], stream["busy_us"], stream["events"]) == ("Stream #13", 1000.0, 3)
    assert stream["top"] == [{"name": "conv_kernel", "us": 600.0, "share": 0.6, "count": 2}]
    assert (ops["process"], ops["timeline"], ops["busy_us"]) == ("/device:GPU:0", "XLA Ops", 1000)

    trace = tmp_path / "plugins" / "profile" / "run" / "perfetto_trace.json.gz"
    trace.parent.mkdir(parents=True)
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": events}, f)
    profile.main([str(tmp_path), "--json", str(tmp_path / "summary.json")])
    assert "| `conv_kernel` | 0.60 | 60.0 | 2 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["timelines"][0]["busy_us"] == 1000
    with pytest.raises(FileNotFoundError, match="--profile_dir"):
        profile.find_trace(tmp_path / "plugins" / "nothing")
