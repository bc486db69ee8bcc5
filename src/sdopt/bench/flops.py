"""How close to the machine's limit: UNet FLOPs per call, and a matmul probe of peak GFLOP/s."""

from __future__ import annotations

import json
import time
from pathlib import Path


def unet_flops_per_call(unet_config: Path, batch: int, height: int, width: int, vae_scale_factor: int, text_hidden: int, seq: int = 77) -> int:
    """FLOPs of one UNet call at this shape, counted once by torch's FlopCounterMode.

    The model is built on the meta device from its config.json: no weights are
    read or allocated, so counting the sd15 UNet costs a second, not 3.4 GB.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = json.loads(Path(unet_config).read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        sample = torch.empty(batch, config.get("in_channels", 4), height // vae_scale_factor, width // vae_scale_factor)
        hidden = torch.empty(batch, seq, text_hidden)
        timestep = torch.tensor(981.0)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=hidden)
    return int(counter.get_total_flops())


_PROBE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def matmul_peak_gflops(precision: str, device: str = "cpu", seconds: float = 1.0, sizes: tuple[int, ...] = (256, 512, 1024, 2048)) -> dict:
    """Best GFLOP/s of a square matmul in this precision: a practical ceiling for this machine.

    The size grows until one call takes a tenth of the time budget, and the best
    rate over the sizes tried is kept: a precision the CPU only emulates (bf16 on
    AVX2) is orders of magnitude slower, and a fixed 2048 probe then took minutes
    and reported a "peak" below what the UNet itself achieved. Weight-quantized
    schemes run their matmuls in a float precision after dequantizing (or in int8
    kernels we do not probe): they are probed in fp32 on CPU and fp16 on CUDA,
    and the report says which precision was probed.
    """
    import torch

    probed = precision if precision in _PROBE_DTYPES else ("fp16" if device.startswith("cuda") else "fp32")
    if probed == "fp16" and not device.startswith("cuda"):
        probed = "fp32"
    dtype = getattr(torch, _PROBE_DTYPES[probed])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best_rate, best_size = 0.0, sizes[0]
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        torch.mm(a, b)  # warm-up: kernel selection, page faults
        sync()
        deadline, fastest = time.perf_counter() + seconds / len(sizes), float("inf")
        while True:
            start = time.perf_counter()
            torch.mm(a, b)
            sync()
            fastest = min(fastest, time.perf_counter() - start)
            if time.perf_counter() >= deadline:
                break
        rate = 2 * size**3 / fastest / 1e9
        if rate > best_rate:
            best_rate, best_size = rate, size
        if fastest > seconds / 10:  # a bigger matrix would blow the budget
            break
    return {"precision_probed": probed, "size": best_size, "gflops": best_rate}
