"""Move a traced ONNX graph into place, its weights streamed into one ``model.onnx_data`` file.

Over protobuf's 2 GB limit, ``torch.onnx.export`` writes one file per weight
beside the graph. Optimum's layout (and ours) is one ``model.onnx_data``. The
obvious way — ``onnx.load(load_external_data=True)`` then save — holds every
weight in memory once more (10 GB for the SDXL UNet) and writes a second copy
on disk before the first is removed. Here the graph is loaded without its
weights, each weight file is appended to ``model.onnx_data`` and deleted, and
only the graph's references are rewritten: one weight in memory at a time, and
the disk never holds both copies.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

EXTERNAL_DATA = "model.onnx_data"
# Large weights start on a page boundary, as onnx.save_model places them, so a runtime can map them in place.
_ALIGN, _ALIGN_FROM = 4096, 1 << 20
_CHUNK = 64 << 20


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def move_graph(raw: Path, final: Path) -> None:
    """Move ``raw`` (model.onnx, perhaps with per-weight files beside it) to ``final``, weights consolidated."""
    final.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(raw), load_external_data=False)
    tensors = _external_tensors(model)
    if not tensors:
        shutil.move(str(raw), str(final))
        return
    infos = [ExternalDataInfo(t) for t in tensors]
    last_use = {info.location: i for i, info in enumerate(infos)}
    offset = 0
    with open(final.parent / EXTERNAL_DATA, "wb") as data:
        for i, (tensor, info) in enumerate(zip(tensors, infos)):
            piece = raw.parent / info.location
            length = info.length if info.length is not None else piece.stat().st_size - (info.offset or 0)
            if length >= _ALIGN_FROM and offset % _ALIGN:
                data.write(b"\0" * (_ALIGN - offset % _ALIGN))
                offset += _ALIGN - offset % _ALIGN
            with open(piece, "rb") as src:
                src.seek(info.offset or 0)
                left = length
                while left:
                    chunk = src.read(min(left, _CHUNK))
                    if not chunk:
                        raise OSError(f"{piece} ends {left} bytes short of the weight {tensor.name!r}")
                    data.write(chunk)
                    left -= len(chunk)
            _point(tensor, offset, length)
            offset += length
            if last_use[info.location] == i:
                piece.unlink()  # the tracer's file per weight: gone once copied, so the disk holds one copy
    onnx.save_model(model, str(final))
    os.remove(raw)



def _point(tensor: onnx.TensorProto, offset: int, length: int) -> None:
    """Rewrite a weight's reference (onnx's set_external_data wants the bytes in the proto; we never load them)."""
    del tensor.external_data[:]
    for key, value in (("location", EXTERNAL_DATA), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
