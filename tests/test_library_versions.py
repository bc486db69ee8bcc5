"""The oldest releases pyproject.toml admits: what sdopt does differently for them, and the one line a release it
cannot run gets."""

from __future__ import annotations

import pytest


class _RecordingTransformersModel:
    """Stands in for CLIPTextModel: records the keywords it was built with."""

    seen: dict = {}

    class config_class:
        @staticmethod
        def from_pretrained(path):
            return "config"

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.seen = kwargs
        return "module"

    @classmethod
    def _from_config(cls, config, **kwargs):
        cls.seen = kwargs
        return "module"


@pytest.mark.parametrize("version, keyword", [("4.45.2", "torch_dtype"), ("4.55.4", "torch_dtype"), ("4.56.0", "dtype"),
                                              ("5.25.0", "dtype")])
def test_a_text_encoder_gets_its_dtype_by_the_keyword_its_transformers_reads(tiny_model, monkeypatch, version, keyword):
    """Transformers renamed torch_dtype to dtype in 4.56: before it, dtype= reached CLIPTextModel.__init__ and every
    torch load, export and quantize on transformers 4.45-4.55 stopped with a TypeError called a damaged checkpoint."""
    import torch
    import transformers

    from sdopt.runtime import torch as runtime_torch

    monkeypatch.setattr(transformers, "__version__", version)
    monkeypatch.setattr(runtime_torch, "module_class", lambda name: _RecordingTransformersModel)
    runtime_torch.load_pretrained("text_encoder", tiny_model / "text_encoder")
    assert _RecordingTransformersModel.seen[keyword] is torch.float32
    assert set(_RecordingTransformersModel.seen) & {"dtype", "torch_dtype"} == {keyword}
    runtime_torch.empty_module("text_encoder", tiny_model / "text_encoder")
    assert _RecordingTransformersModel.seen == {keyword: torch.float32}
