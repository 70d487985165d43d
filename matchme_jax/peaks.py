"""Dense peak FLOP/s of the accelerators the benchmarks know, for MFU. Imports nothing, so that
benchmarks/torch_cats_bench.py can use the same table where JAX is not installed."""

# By compute precision, matched on a substring of the device name (jax's `device_kind`, torch's
# `get_device_name`); the first match wins, so "H100 PCIe" comes before "H100". "fp32" is the
# TF32 tensor-core peak: XLA runs float32 matmuls and convolutions in TF32 on these GPUs by default
# (cuDNN does for PyTorch's convolutions); at "highest" precision the ceiling would be the plain
# float32 peak (67 TFLOP/s on an H100 SXM or H200), about 7x lower.
PEAK_FLOPS = (
    ("H100 PCIe", {"bf16": 756e12, "fp32": 378e12}),
    ("H100", {"bf16": 989e12, "fp32": 494.7e12}),
    ("H200", {"bf16": 989e12, "fp32": 494.7e12}),
    ("A100", {"bf16": 312e12, "fp32": 156e12}),
)


def peak_flops(device_kind: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one device of `device_kind` at `precision`; None if unknown."""
    for name, peaks in PEAK_FLOPS:
        if name in device_kind:
            return peaks[precision]
    return None
