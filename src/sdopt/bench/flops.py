"""How close to the machine's limit: FLOPs per call of each stage, and a matmul probe of peak GFLOP/s."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

from sdopt.runtime.versions import require_compatible_libraries


def _counted(call) -> int:
    """FLOPs of ``call()`` as torch's FlopCounterMode counts them (matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        call()
    return int(counter.get_total_flops())


@functools.lru_cache(maxsize=None)  # one count per model and shape in a report
def unet_flops_per_call(unet_config: Path, batch: int, height: int, width: int, vae_scale_factor: int, seq: int = 77,
                        shallow: bool = False) -> int:
    """FLOPs of one UNet call at this shape, counted once by torch's FlopCounterMode.

    The model is built on the meta device from its config.json: no weights are
    read or allocated, so counting the sd15 UNet costs a second, not 3.4 GB.
    The text conditioning's width is the config's ``cross_attention_dim``; an
    SDXL UNet (``addition_embed_type: text_time``) also gets its pooled text
    embedding and size ids. ``shallow``: only the branch a step-cached step runs (sdopt.stepcache).
    """
    import torch

    require_compatible_libraries()  # one line, not the ImportError of a Diffusers that cannot import its models
    from diffusers import UNet2DConditionModel

    config = json.loads(Path(unet_config).read_text(encoding="utf-8"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        sample = torch.empty(batch, config.get("in_channels", 4), height // vae_scale_factor, width // vae_scale_factor)
        hidden = torch.empty(batch, seq, int(config["cross_attention_dim"]))
        timestep = torch.tensor(981.0)
        added = None
        if config.get("addition_embed_type") == "text_time":
            ids = 6 * int(config["addition_time_embed_dim"])  # original size, crop top-left, target size
            added = {"text_embeds": torch.empty(batch, int(config["projection_class_embeddings_input_dim"]) - ids),
                     "time_ids": torch.empty(batch, 6)}
    if shallow:
        from sdopt.stepcache.unet import ShallowUNet

        with torch.device("meta"):
            feature = torch.empty(batch, config["block_out_channels"][1], *sample.shape[-2:])
        return _counted(lambda: ShallowUNet(unet)(sample, timestep, hidden, feature))
    return _counted(lambda: unet(sample, timestep, encoder_hidden_states=hidden, added_cond_kwargs=added))


@functools.lru_cache(maxsize=None)  # one count per model and shape in a report
def text_encoder_flops(config: Path, batch: int, seq: int = 77) -> int:
    """FLOPs of one text-encoder call (batch: the prompts and, with guidance, their negatives).
    ``config``: a text encoder folder's config.json; the folder's name says which class it is
    (SDXL's ``text_encoder_2`` has a projection)."""
    import torch

    from sdopt.runtime.torch import module_class

    cls = module_class("text_encoder_2" if Path(config).parent.name == "text_encoder_2" else "text_encoder")
    with torch.device("meta"):
        model = cls(cls.config_class.from_pretrained(Path(config).parent))
        ids = torch.zeros(batch, seq, dtype=torch.long)
    return _counted(lambda: model(input_ids=ids))


@functools.lru_cache(maxsize=None)  # one count per model and shape in a report
def vae_decoder_flops(config: Path, latent_shape: tuple[int, ...], tiny: bool = False, rewritten: bool = False) -> int:
    """FLOPs of one decode at this latent shape: the full AutoencoderKL, or a tiny decoder (AutoencoderTiny);
    ``rewritten``: as the artifact computes it after sdopt.rewrite's exact rewrites (fewer FLOPs, same outputs)."""
    import torch

    require_compatible_libraries()  # text_encoder_flops checks through module_class
    from diffusers import AutoencoderKL, AutoencoderTiny

    data = json.loads(Path(config).read_text(encoding="utf-8"))
    with torch.device("meta"):
        module = (AutoencoderTiny if tiny else AutoencoderKL).from_config(data)
        latents = torch.empty(*latent_shape)
        if rewritten:
            from sdopt.rewrite import apply_rewrites

            apply_rewrites("vae_decoder", module)
    return _counted(lambda: module.decode(latents))


_PROBE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def probe_precision(precision: str, device: str = "cpu") -> tuple[str, str | None]:
    """(the precision to probe, why it differs) for a stage that ran in ``precision``.

    int8 (activations and weights, NNCF int8-static) is probed with an int8
    matmul. bf16 on a CPU without AVX512-BF16 or AMX is emulated: the hardware
    computes it in fp32, so fp32's ceiling is the one that means something (the
    slow emulated-bf16 matmul made the UNet look like 166% of "peak").
    Weight-only schemes dequantize to a float precision: fp32 on CPU, fp16 on CUDA.
    """
    cuda = device.startswith("cuda")
    if precision == "int8" and not cuda:
        return "int8", None
    if precision == "bf16" and not cuda:
        from sdopt.hardware import BF16_ISA, cpu_lacks_bf16, hidden_by_cap

        if cpu_lacks_bf16():
            where = hidden_by_cap(BF16_ISA) or "this CPU has no AVX512-BF16 or AMX"
            return "fp32", f"bf16 is emulated where {where}: measured against fp32's ceiling"
        return "bf16", None
    if precision in _PROBE_DTYPES and not (precision == "fp16" and not cuda):
        return precision, None
    return ("fp16" if cuda else "fp32"), None


CPU_PROBE_SIZES = (256, 512, 1024, 2048)
# A GPU's tensor cores fill only on larger matrices: on an H200 the fp16 probe stopped at 2048² read
# 440 TFLOP/s, where an 8192² bf16 product runs at ~790 (reports/cuda-h200/: "of peak" was against the former).
CUDA_PROBE_SIZES = (1024, 2048, 4096, 8192)


def probe_sizes(device: str) -> tuple[int, ...]:
    return CUDA_PROBE_SIZES if device.startswith("cuda") else CPU_PROBE_SIZES


def matmul_peak_gflops(precision: str, device: str = "cpu", seconds: float | None = None, sizes: tuple[int, ...] | None = None) -> dict:
    """Best GFLOP/s (GOP/s for int8) of a square matmul in this precision: a practical ceiling for this machine.

    ``seconds``: the probe's time budget, default 1 s per precision ($SDOPT_PEAK_PROBE_SECONDS sets it: the
    test suite, where "of peak" is only checked for its logic, probes for 0.2 s).

    The size grows until one call takes a tenth of the time budget, and the best
    rate over the sizes tried is kept: a precision the CPU only emulates is far
    slower, and a fixed 2048 probe then took minutes. Which precision is probed
    for which is ``probe_precision``'s decision; the report says which it was.
    """
    probed, why = probe_precision(precision, device)
    sizes = sizes or probe_sizes(device)
    seconds = seconds if seconds is not None else float(os.environ.get("SDOPT_PEAK_PROBE_SECONDS") or 1.0)
    if probed == "int8":
        result = _int8_peak(seconds, sizes)
    else:
        result = _float_peak(probed, device, seconds, sizes)
    return {**result, **({"note": why} if why else {})}


def _best_rate(run, sizes: tuple[int, ...], seconds: float, sync=lambda: None) -> tuple[float, int]:
    """The best 2*n^3/second over sizes of ``run(size)`` (a callable that returns a zero-argument call)."""
    best_rate, best_size = 0.0, sizes[0]
    for size in sizes:
        call = run(size)
        call()  # warm-up: kernel selection, page faults
        sync()
        deadline, fastest = time.perf_counter() + seconds / len(sizes), float("inf")
        while True:
            start = time.perf_counter()
            call()
            sync()
            fastest = min(fastest, time.perf_counter() - start)
            if time.perf_counter() >= deadline:
                break
        rate = 2 * size**3 / fastest / 1e9
        if rate > best_rate:
            best_rate, best_size = rate, size
        if fastest > seconds / 10:  # a bigger matrix would blow the budget
            break
    return best_rate, best_size


def _int8_peak(seconds: float, sizes: tuple[int, ...]) -> dict:
    """uint8 x int8 -> int32 matmul in ONNX Runtime (MatMulInteger; MLAS picks VNNI/AMX/AVX2 kernels by CPU):
    the int8 kernels NNCF-quantized graphs run on. PyTorch's CPU int8 matmul is no ceiling (about 1 GOP/s)."""
    import numpy as np

    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return {**_float_peak("fp32", "cpu", seconds, sizes), "note": "onnxruntime is not installed: int8 measured against fp32's ceiling"}

    rng = np.random.default_rng(0)

    def session(size: int):
        weights = numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "B")
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "int8_probe",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])],
            initializer=[weights],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = {"A": rng.integers(0, 256, (size, size), dtype=np.uint8)}
        return lambda: sess.run(None, feed)

    rate, size = _best_rate(session, sizes, seconds)
    return {"precision_probed": "int8", "size": size, "gflops": rate, "kernel": f"onnxruntime {ort.__version__} MatMulInteger"}


def _float_peak(probed: str, device: str, seconds: float, sizes: tuple[int, ...]) -> dict:
    import torch

    dtype = getattr(torch, _PROBE_DTYPES[probed])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def matmul(size: int):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        return lambda: torch.mm(a, b)

    rate, size = _best_rate(matmul, sizes, seconds, sync)
    return {"precision_probed": probed, "size": size, "gflops": rate}
