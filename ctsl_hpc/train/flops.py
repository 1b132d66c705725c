"""Model FLOPs utilisation (MFU): FLOPs counted by torch against a GPU's dense bf16 peak.

FLOPs are those torch's ``FlopCounterMode`` counts (matrix products, convolutions, attention; forward
and backward), as usual for MFU: element-wise work and the optimiser step are left out.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode

# dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets; the first key
# whose words all appear in the device name wins (torch names the H100 SXM "NVIDIA H100 80GB HBM3")
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1,
}


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name (``torch.cuda.get_device_name()``); None if unknown.

    Examples:
        >>> peak_bf16_tflops("NVIDIA H100 80GB HBM3"), peak_bf16_tflops("NVIDIA H100 PCIe")
        (989.4, 756.0)
        >>> peak_bf16_tflops("NVIDIA H200"), peak_bf16_tflops("cpu")
        (989.4, None)
    """
    for key, peak in PEAK_BF16_TFLOPS.items():
        if all(word in device_name for word in key.split()):
            return peak
    return None


def counted_flops(work: Callable[[], object]) -> int:
    """FLOPs that torch counts while ``work()`` runs.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(4, 3, bias=False)
        >>> counted_flops(lambda: layer(torch.ones(2, 4)).sum().backward())  # 2*2*4*3 forward, as much backward
        96
    """
    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return counter.get_total_flops()


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: ``flops`` done in ``seconds`` as a share of a ``peak_tflops`` device.

    Args:
        flops: FLOPs of the work (e.g. :func:`counted_flops` of one step, times the steps timed).
        seconds: the wall time the work took.
        peak_tflops: the device's peak in TFLOP/s (:func:`peak_bf16_tflops`).

    Returns:
        The achieved rate divided by the peak, in [0, 1] for a correct peak.

    Example:
        >>> mfu(4.947e14, 1.0, 989.4)  # 494.7 TFLOP in one second on an H100
        0.5
    """
    if seconds <= 0 or peak_tflops <= 0:
        raise ValueError(f"seconds and peak must be positive, got {seconds} s and {peak_tflops} TFLOP/s")
    return flops / seconds / (peak_tflops * 1e12)
