"""Before ONNX Runtime quantizes a VAE decoder: the export's upsample rewrite turned back into upsample + 3×3 convolution.

sdopt.rewrite.upsample exports each nearest ×2 + 3×3 convolution as one stride-2 transposed convolution (5/9 fewer
FLOPs, exact). In float that is faster; int8 is not: ONNX Runtime's int8 recipe leaves the transposed convolutions
float (quantized anyway, it ran no faster), while the plain form's convolution runs int8. On sd15 at 256² the int8
decoder with them decoded in 1,414 ms (the three transposed convolutions 42% of it), turned back 1,054 ms, 31.69 and
31.45 dB (docs/onnx.md). The 3×3 kernel comes back from the 4×4 one exactly: per dimension the 4×4 kernel holds the
3×3 taps as (w2, w1 + w2, w0 + w1, w0) (sdopt.rewrite.upsample's _TAPS and _TRANSPOSED_INDEX), so w0, w2 are read
and w1 is a difference; a transposed convolution whose kernel is not of that form is left as it is.
"""

from __future__ import annotations

import numpy as np

# 4x4-kernel index <- 3x3 taps, per dimension (rows and columns alike): K = EXPAND @ W @ EXPAND.T
EXPAND = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=np.float64)
# A left inverse of EXPAND: w0 = k3, w1 = k1 - k0, w2 = k0
RECOVER = np.array([[0, 0, 0, 1], [-1, 1, 0, 0], [1, 0, 0, 0]], dtype=np.float64)


def conv_kernel(transposed: np.ndarray) -> np.ndarray | None:
    """The (O, I, 3, 3) kernel whose nearest ×2 + convolution equals the stride-2 transposed convolution with
    ``transposed`` (I, O, 4, 4); None when no 3×3 kernel does (a transposed convolution sdopt did not write)."""
    k = transposed.astype(np.float64).transpose(1, 0, 2, 3)  # (O, I, 4, 4)
    weight = RECOVER @ k @ RECOVER.T
    if not np.allclose(EXPAND @ weight @ EXPAND.T, k, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(k).max()))):
        return None
    return weight.astype(transposed.dtype)


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewritten(node, attributes: dict) -> bool:
    """A ConvTranspose of sdopt's upsample rewrite's shape: 4×4 kernel, stride 2, padding 1, no output padding or groups."""
    return (node.op_type == "ConvTranspose" and list(attributes.get("strides", [])) == [2, 2] and list(attributes.get("pads", [])) == [1, 1, 1, 1]
            and list(attributes.get("kernel_shape", [4, 4])) == [4, 4] and attributes.get("group", 1) == 1
            and not any(attributes.get("output_padding", [])) and not attributes.get("output_shape") and list(attributes.get("dilations", [1, 1])) == [1, 1])


def undo_upsample_rewrite(model) -> int:
    """Replace in ``model`` (an onnx ModelProto with its weights) every transposed convolution of sdopt's upsample
    rewrite by Resize (nearest ×2, as torch's) and a 3×3 padding-1 convolution; how many were replaced."""
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    nodes, replaced = [], 0
    for node in model.graph.node:
        attributes = _attributes(node)
        kernel = None
        if _rewritten(node, attributes) and node.input[1] in weights:
            kernel = conv_kernel(numpy_helper.to_array(weights[node.input[1]]))
        if kernel is None:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        scales, upsampled, name = f"{base}/undone_scales", f"{base}/undone_upsampled", f"{base}/undone_weight"
        model.graph.initializer.extend([numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), scales),
                                        numpy_helper.from_array(kernel, name)])
        nodes.append(helper.make_node("Resize", [node.input[0], "", scales], [upsampled], name=f"{base}/Resize", mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        nodes.append(helper.make_node("Conv", [upsampled, name, *node.input[2:]], list(node.output), name=f"{base}/Conv",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        replaced += 1
    if replaced:
        used = {i for n in nodes for i in n.input}
        kept = [init for init in model.graph.initializer if init.name in used]  # the 4x4 kernels go
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return replaced
