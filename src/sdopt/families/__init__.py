"""Pipeline families: what differs between Stable Diffusion 1.x/2.x and SDXL, declared in one place.

The one denoising loop (runtime/pipeline.py) asks an artifact's family which
text encoders and tokenizers it has, how their outputs become the UNet's
conditioning (embeddings, and SDXL's pooled embedding and time ids), and what
the UNet's extra inputs are; it never tests a family's name. Exporters read the
family's component specs the same way. A new family is one module here and one
entry in ``FAMILIES``.

This module stays free of torch and numpy at import: manifests and the CLI read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdopt.errors import SdoptError, with_article
from sdopt.families.base import Family


def _families() -> dict[str, Family]:
    from sdopt.families import sd, sdxl

    return {f.name: f for f in (sd.FAMILY, sdxl.FAMILY)}


FAMILIES: dict[str, Family] = _families()
# The family of a folder or manifest that names none: SD 1/2, one default for both (sdopt.manifest.FAMILY reads it).
DEFAULT = "stable-diffusion"


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise SdoptError(f"unknown model family {name!r}: sdopt runs {', '.join(sorted(FAMILIES))}") from None


def family_of_class(pipeline_class: str | None, where: Path | str) -> Family:
    """The family of a folder whose model_index.json names ``pipeline_class`` (None: no index, SD)."""
    if pipeline_class is None:
        return FAMILIES[DEFAULT]
    for family in FAMILIES.values():
        if isinstance(pipeline_class, str) and pipeline_class in family.pipeline_classes:
            return family
    known = sorted(c for f in FAMILIES.values() for c in f.pipeline_classes if not c.startswith(("ORT", "OV", "Onnx")))
    runs = f"sdopt runs {', '.join(known)} pipelines (and their ONNX/OpenVINO exports)"
    if isinstance(pipeline_class, list) and len(pipeline_class) == 2 and all(isinstance(p, str) for p in pipeline_class):
        # Diffusers' custom pipeline: [module, class], code shipped in the model's folder, which sdopt never imports
        module, name = pipeline_class
        raise SdoptError(f"{where} holds a custom pipeline ({name} from its own {module}.py: code shipped with the model, "
                         f"which sdopt never runs); {runs}")
    if not isinstance(pipeline_class, str):
        raise SdoptError(f"{where}/model_index.json names its pipeline class as {json.dumps(pipeline_class)[:100]}, not a "
                         f"class name: the file is damaged or not Diffusers'; {runs}")
    raise SdoptError(f"{where} holds {with_article(pipeline_class)}; {runs}")
