"""Memory for attention on a backend that computes every attention's whole score matrix (ONNX Runtime on a CPU).

An exported UNet's attention is MatMul, Softmax, MatMul: ONNX Runtime's CPU kernels hold the (UNet batch x heads x N x N)
scores, N the latent tokens at the first attention level, so the memory of a call grows with the fourth power of the
image's side. torch (scaled_dot_product_attention's flash kernel) and OpenVINO (its fused SDPA) do not. Measured on the
tiny model, 1 step, guidance on (UNet batch 2, 8 heads at the full latent size; SD 1.5 has the same attention there),
peak RSS in GiB, by measure/attention_memory.py (2-core Zen 4, AVX-512; committed in
docs/measurements/onnx_attention_fused/tiny_attention_memory.json):

    side                        256    384    512
    ONNX RT, plain graph        0.62   1.39   3.52
    ONNX RT, attention_by_head  0.51   0.70   1.16
    ONNX RT, attention_fused    0.49   0.57   0.64
    torch                       0.58   0.69   0.77
    OpenVINO                    0.57   0.67   0.75

The plain graph over torch is 0.5, 2.2 and 2.75 score matrices (67 MB, 340 MB, 1074 MB each; over the fused graph, the
same runtime without them, 2.1, 2.6 and 2.9): SCORE_COPIES below. At 1024² the scores alone are 17 GB, and a server
given AUTOMATIC1111's default hires pass (512² to 1024²) was killed by the kernel at 23 GB. A request whose estimate exceeds the memory the machine has available is refused before it runs, saying so.
A UNet exported with the attention_fused rewrite (ONNX Runtime's MultiHeadAttention: flash attention, no score matrix;
the ONNX export's default since 2026-12-06) is not checked; one with attention_by_head holds one head's.
"""

from __future__ import annotations

from typing import Any

from sdopt.errors import SdoptError
from sdopt.hardware import available_bytes  # a module global here: the tests replace it

# The plain graph's peak over torch's at 512² is 2.75 score matrices (the table above), rounded up. Head by head: 3.1
# of one head's (0.39 GiB over torch's, one head's scores being 0.125 GiB; 3.3-4.1 over the fused graph's): 3 counts
# 0.016 GiB less than that at 512², under what a peak RSS moves between runs (torch's was 0.73 GiB in an earlier run).
# A larger factor would over-count the plain graph, whose scores reach 16 GiB at 1024², and nothing here counts the
# rest of the call's activations anyway: the guard stops the fourth-power growth, it is not a memory budget.
SCORE_COPIES = 3
BYTES = 4  # float32 scores (an fp16 graph's are half: the estimate stays on the safe side)
BACKENDS = ("onnxruntime",)  # the backends whose attention holds the whole score matrix on a CPU


def _first_attention(config: dict[str, Any]) -> tuple[int, int] | None:
    """(level, heads) of the UNet's first down block with attention: the level halves the latent side that many times."""
    blocks = config.get("down_block_types") or []
    level = next((i for i, name in enumerate(blocks) if "Attn" in name), None)
    if level is None:
        return None
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")  # Diffusers' own fallback
    heads = heads[level] if isinstance(heads, (list, tuple)) else heads
    return (level, int(heads)) if isinstance(heads, int) or str(heads).isdigit() else None


def score_bytes(unet_config: dict[str, Any], unet_batch: int, height: int, width: int, factor: int, rewrites=()) -> int:
    """One attention's scores at the first attention level: UNet batch x heads x N x N x 4 bytes. ``rewrites``: those the
    UNet was exported with — attention_by_head computes the heads in turn (one head's), attention_fused holds none."""
    found = _first_attention(unet_config)
    by_head = "attention_by_head" in rewrites  # asked for, it takes the self-attention before attention_fused would
    if found is None or ("attention_fused" in rewrites and not by_head):
        return 0
    level, heads = found
    heads = 1 if by_head else heads
    tokens = (height // factor >> level) * (width // factor >> level)
    return unet_batch * heads * tokens * tokens * BYTES


def check(backend: str, device: str, unet_config: dict[str, Any], model: dict[str, Any], images: int, guided: bool, height: int, width: int,
          rewrites=()) -> None:
    """Refuse a request whose attention would need more memory than the machine has available (ONNX Runtime on a CPU).
    ``unet_config``: the UNet's config.json (empty when unknown: nothing is checked); ``rewrites``: the exact rewrites the
    UNet was exported with (the manifest's)."""
    if backend not in BACKENDS or not device.startswith("cpu") or not unet_config:
        return
    unet_batch = images * (2 if guided else 1)
    need = SCORE_COPIES * score_bytes(unet_config, unet_batch, height, width, int(model.get("vae_scale_factor", 8)), rewrites)
    have = available_bytes()
    if have is None or need <= have:
        return
    raise SdoptError(
        f"a {width}x{height} request ({images} image{'s' * (images != 1)}{', guided: the UNet runs twice that' if guided else ''}) would need about {need / 2**30:.1f} GiB for ONNX Runtime's attention "
        f"(it holds each attention's whole score matrix: memory grows with the fourth power of the side), and this machine has "
        f"{have / 2**30:.1f} GiB available: ask for a smaller size or fewer images, run an OpenVINO or torch artifact, whose "
        "attention does not hold it, or export this model to ONNX again with sdopt's default rewrites (without --no-rewrites, "
        "--rewrite attention_by_head or --rewrite transformer_channels_first): they give attention to ONNX Runtime's own fused "
        "operator, which holds no score matrix",
        field="width")
