r"""Times the OFFICIAL PyTorch CATs (SunghwanHong/Cost-Aggregation-transformers) for comparison
with matchme_jax.bench: same rows, same JSON fields.

    bash benchmarks/fetch_official_cats.sh        # once, with network: fills .official_cats/
    python3 benchmarks/torch_cats_bench.py --json=torch_cats.json     # --device=cpu to smoke-test

The official code is imported from --official_dir, not copied. Its model is built as its train.py
builds it for SPair-71k (feature size 16, depth 1, 6 heads, projection 128, hyperpixels
[0,8,20,21,26,28,29,30], 256 x 256 images), with RANDOM weights: the ImageNet ResNet-101 download
that `resnet101(pretrained=True)` asks for is patched away (the module attribute is replaced
here; the official files stay untouched). Weights do not change the timing.

Rows (batch 32 by default), in this order:
  train    bf16 fine_tuned, bf16 frozen, then (after the annotate rows) fp32 fine_tuned, fp32 frozen
  annotate bf16, fp32
A `train` step is one iteration of the official loop (utils_training/optimize.py, train_epoch):
zero_grad, forward `net(target, source)`, the official sparse EPE loss on a 16 x 16 flow
(cells that are exactly zero are invalid), backward, AdamW with train.py's two parameter groups
(head lr 3e-5, backbone lr 3e-6, weight decay 0.05) and `Loss.item()`. "frozen" is train.py's
--freeze (its default): backbone requires_grad False, its BatchNorm still in train mode.
"fine_tuned" is --freeze=False. `annotate` is the eval-mode forward under torch.no_grad().
bf16 wraps forward and loss in torch.autocast(bfloat16), as a user would add it (the official
code has no mixed precision); fp32 keeps torch's defaults (train.py sets no TF32 or cuDNN flags).

What is timed: the step alone, on random normalised images and a random flow already on the
device. Not timed: data loading, JPEG decoding and the augmentation, which the official code
runs on the host (DataLoader workers, albumentations) while matchme_jax runs its augmentation
inside the timed train step on the device; nor the per-epoch LR scheduler, the tensorboard
writer and train.py's nn.DataParallel wrapper (a pass-through on one GPU).
Each step is timed on its own (CUDA events around it, then a synchronize; perf_counter on the
CPU) after --warmup untimed steps; the row reports the median. flops_per_pair counts one extra
step under torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions only; XLA's cost
analysis in the JAX rows also counts elementwise work), divided by the batch size.
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
import types

import torch

# The MFU table shared with matchme_jax.bench (matchme_jax.peaks imports nothing, so no JAX).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from matchme_jax.peaks import peak_flops  # noqa: E402

# (mode, precision, backbone) in run order; the flags pick a subset.
ROWS = (
    ("train", "bf16", "fine_tuned"),
    ("train", "bf16", "frozen"),
    ("annotate", "bf16", None),
    ("annotate", "fp32", None),
    ("train", "fp32", "fine_tuned"),
    ("train", "fp32", "frozen"),
)
# train.py's SPair-71k defaults.
MODEL_ARGS = dict(
    feature_size=16,
    feature_proj_dim=128,
    depth=1,
    num_heads=6,
    mlp_ratio=4,
    hyperpixel_ids=[0, 8, 20, 21, 26, 28, 29, 30],
)
LR, LR_BACKBONE, WEIGHT_DECAY = 3e-5, 3e-6, 0.05


def load_official(official_dir):
    """The official CATs class and EPE loss, with the ImageNet weight download patched away."""
    if not os.path.isfile(os.path.join(official_dir, "models", "cats.py")):
        raise FileNotFoundError(
            f"--official_dir={official_dir}: no official CATs code there (models/cats.py); "
            "run benchmarks/fetch_official_cats.sh first"
        )
    sys.path.insert(0, os.path.abspath(official_dir))
    # optimize.py imports tqdm and scikit-image for its progress bar and PCK evaluation, which
    # the loss does not use: stand-ins where they are missing (the GPU machine may lack both).
    for name, attrs in (("tqdm", {"tqdm": lambda it, **_: it}), ("skimage", {"draw": None})):
        try:
            __import__(name)
        except ImportError:
            print(f"note: {name} not installed, stubbed (unused by the loss)", file=sys.stderr)
            sys.modules[name] = stub = types.ModuleType(name)
            stub.__dict__.update(attrs)
    from models.feature_backbones import resnet  # the official package

    official_resnet101 = resnet.resnet101

    def resnet101_random(pretrained=False, **kwargs):
        return official_resnet101(pretrained=False, **kwargs)

    resnet.resnet101 = resnet101_random  # cats.py calls resnet.resnet101(pretrained=True)
    from models.cats import CATs
    from utils_training.optimize import EPE

    return CATs, EPE


def environment(device, commit):
    cuda = device.type == "cuda"
    return {
        "framework": "pytorch",
        "device_kind": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
        "official_commit": commit,
    }


def make_step(official, device, mode, precision, backbone, batch_size, image_size):
    """The row's model, inputs and one step (a closure); everything lives on `device`."""
    CATs, EPE = official
    torch.manual_seed(2021)  # train.py's seed; the weights are random either way
    net = CATs(**MODEL_ARGS, freeze=backbone == "frozen").to(device)
    s, f = image_size, MODEL_ARGS["feature_size"]
    target = torch.randn(batch_size, 3, s, s, device=device)
    source = torch.randn(batch_size, 3, s, s, device=device)

    def autocast():
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    if mode == "annotate":
        net.eval()

        def step():
            with torch.no_grad(), autocast():
                return net(target, source)

        return step

    # Ground truth as the official KeypointToFlow makes it: flow in feature-grid cells, most
    # cells exactly (0, 0) = no keypoint there = ignored by the sparse EPE.
    flow_gt = (torch.rand(batch_size, 2, f, f, device=device) - 0.5) * 8
    flow_gt *= (torch.rand(batch_size, 1, f, f, device=device) < 0.25).float()
    # train.py: two groups by name, backbone included even when frozen (AdamW skips grad-less).
    head = [p for n, p in net.named_parameters() if "feature_extraction" not in n]
    backbone_params = [p for n, p in net.named_parameters() if "feature_extraction" in n]
    optimizer = torch.optim.AdamW(
        [{"params": head, "lr": LR}, {"params": backbone_params, "lr": LR_BACKBONE}],
        weight_decay=WEIGHT_DECAY,
    )
    net.train()

    def step():
        optimizer.zero_grad()
        with autocast():
            loss = EPE(net(target, source), flow_gt)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def time_steps(step, device, steps, warmup):
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def count_flops(step):
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        return counter.get_total_flops() or None
    except Exception as e:  # noqa: BLE001 (a count is optional)
        print(f"flop count failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def measure(official, device, args, mode, precision, backbone):
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step = make_step(official, device, mode, precision, backbone, args.batch_size, args.image_size)
    times = time_steps(step, device, args.steps, args.warmup)
    peak_bytes = torch.cuda.max_memory_allocated(device) if cuda else None
    flops = count_flops(step)
    median = statistics.median(times)
    pairs_per_s = args.batch_size / median
    flops_per_pair = flops / args.batch_size if flops else None
    peak = peak_flops(torch.cuda.get_device_name(device), precision) if cuda else None
    return {
        "pairs_per_s": round(pairs_per_s, 2),
        "step_time_median_s": median,
        "step_times_s": times,
        "peak_bytes": peak_bytes,
        "flops_per_pair": flops_per_pair,
        "peak_flops_per_device": peak,
        "mfu": pairs_per_s * flops_per_pair / peak if flops_per_pair and peak else None,
    }


def write_json(path, result):
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official_dir", default=".official_cats")
    p.add_argument("--official_commit", default="d01785a")
    p.add_argument("--json", default=None, help="written after every row")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default="train,annotate")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--backbones", default="fine_tuned,frozen")
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--time_budget_s",
        type=float,
        default=None,
        help="start no row that the slowest row so far says would end past this",
    )
    args = p.parse_args(argv)
    deadline = time.monotonic() + (args.time_budget_s if args.time_budget_s is not None else 1e18)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    official = load_official(args.official_dir)
    modes, precisions = args.modes.split(","), args.precisions.split(",")
    backbones = args.backbones.split(",")
    result = {
        "environment": environment(device, args.official_commit),
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": [],
    }
    slowest = 0.0
    for mode, precision, backbone in ROWS:
        if mode not in modes or precision not in precisions or backbone not in backbones + [None]:
            continue
        row = {"framework": "pytorch", "mode": mode, "batch_size": args.batch_size}
        row["precision"] = precision
        if backbone:
            row["backbone"] = backbone
        row["attention"] = "official"
        row_started = time.monotonic()
        if deadline - row_started < slowest:
            left = deadline - row_started
            row["error"] = f"not run: {left:.0f} s of budget left, a row took {slowest:.0f} s"
        else:
            try:
                row.update(measure(official, device, args, mode, precision, backbone))
            except Exception as e:  # noqa: BLE001 (an OOM must not lose the other rows)
                traceback.print_exc()
                row["error"] = f"{type(e).__name__}: {e}"[:2000]
            slowest = max(slowest, time.monotonic() - row_started)
        gc.collect()  # the row's model, optimizer and activations (also from a traceback)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["rows"].append(row)
        write_json(args.json, result)
        print(json.dumps({k: v for k, v in row.items() if k != "step_times_s"}), flush=True)


if __name__ == "__main__":
    main()
