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


@pytest.mark.parametrize("installed, named", [
    ({"diffusers": "0.35.2", "transformers": "4.48.3", "torchao": "0.18.0"}, "pip install 'diffusers>=0.37'"),
    ({"diffusers": "0.36.0", "transformers": "5.25.0", "torchao": "0.18.0"}, "pip install 'diffusers>=0.37'"),
    ({"diffusers": "0.42.1", "transformers": "4.45.2"}, "pip install 'transformers>=4.48'"),
    ({"diffusers": "0.37.0.dev0", "transformers": "4.47.1", "torchao": "0.18.0"}, "pip install 'transformers>=4.48'"),
    ({"diffusers": "0.37.0", "transformers": "4.48.3", "peft": "0.19.1", "accelerate": "0.31.0"}, "pip install 'accelerate>=0.32'"),
])
def test_releases_that_cannot_import_diffusers_models_together_are_named_with_the_fix(installed, named):
    from sdopt.runtime.versions import incompatible_libraries

    problem = incompatible_libraries(installed)
    assert problem is not None and named in problem and f"diffusers {installed['diffusers']}" in problem


@pytest.mark.parametrize("installed", [
    {"diffusers": "0.35.2", "transformers": "4.45.2"},  # no torchao: the whole everyday path runs (QA, 2026-12-07)
    {"diffusers": "0.37.0", "transformers": "4.48.3", "torchao": "0.18.0"},
    {"diffusers": "0.42.1", "transformers": "5.25.0", "torchao": "0.18.0"},
    {"diffusers": "0.37.0", "transformers": "4.48.3", "accelerate": "0.30.1"},  # no peft: accelerate's floor holds
])
def test_releases_that_work_together_pass(installed):
    from sdopt.runtime.versions import incompatible_libraries

    assert incompatible_libraries(installed) is None


def test_init_model_beside_a_diffusers_that_cannot_import_its_models_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Diffusers 0.36 beside sdopt[quant]'s torchao: a RuntimeError traceback ending in "name 'logger' is not
    defined" from inside Diffusers, before; one line naming both releases and the pip command now, and no folder."""
    from sdopt.cli import main
    from sdopt.runtime import versions

    monkeypatch.setattr(versions, "library_versions", lambda *names: {"diffusers": "0.36.0", "transformers": "4.48.3",
                                                                       "torchao": "0.18.0"})
    assert main(["init-model", "tiny", str(tmp_path / "tiny")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdopt: error: diffusers 0.36.0 cannot import its models beside torchao 0.18.0") and "\n" not in err
    assert not (tmp_path / "tiny").exists()


def test_pyproject_admits_no_pair_of_releases_that_cannot_import_diffusers_models():
    """pip picks any release inside the ranges: the oldest Transformers beside the newest Diffusers, the oldest Diffusers
    beside [quant]'s torchao. Both pairs broke every torch command (the ranges were diffusers>=0.35 and transformers>=4.45)."""
    import re
    import tomllib
    from pathlib import Path

    from sdopt.runtime.versions import incompatible_libraries

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]

    def bound(requirements: list[str], name: str, op: str) -> str:
        """The tightest `op` bound of `name` the requirements set (>=: the highest floor; <: the lowest cap)."""
        found = [m.group(1) for r in requirements for m in [re.search(rf"^{name}\b.*?{op}\s*([\d.]+)", r)] if m]
        key = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
        return (max if op == ">=" else min)(found, key=key)

    core, quant = project["dependencies"], project["dependencies"] + project["optional-dependencies"]["quant"]
    newest_diffusers = bound(core, "diffusers", "<") + ".99"  # below the cap
    assert incompatible_libraries({"diffusers": newest_diffusers, "transformers": bound(core, "transformers", ">=")}) is None
    assert incompatible_libraries({"diffusers": bound(quant, "diffusers", ">="), "transformers": bound(core, "transformers", ">="),
                                   "torchao": bound(quant, "torchao", ">=")}) is None
    lora = project["dependencies"] + project["optional-dependencies"]["lora"]
    assert incompatible_libraries({"diffusers": newest_diffusers, "transformers": "5.25.0", "peft": bound(lora, "peft", ">="),
                                   "accelerate": bound(lora, "accelerate", ">=")}) is None


def test_the_library_check_of_every_torch_load_reads_the_installed_versions_once(monkeypatch):
    """require_compatible_libraries runs on every torch component load (runtime.torch.module_class) and read five
    distributions' metadata each time, scanning sys.path: 9-26 ms of a tiny model's 110-170 ms load. Read once now."""
    from importlib import metadata

    from sdopt.runtime import versions

    versions.require_compatible_libraries()
    read, real = [], metadata.version
    monkeypatch.setattr(metadata, "version", lambda dist: read.append(dist) or real(dist))
    versions.require_compatible_libraries()
    assert read == []


def _unet_flops(tmp_path):
    from sdopt.bench.flops import unet_flops_per_call

    return unet_flops_per_call(tmp_path / "config.json", 1, 64, 64, 8)


def _vae_flops(tmp_path):
    from sdopt.bench.flops import vae_decoder_flops

    return vae_decoder_flops(tmp_path / "config.json", (1, 4, 8, 8), tiny=True)


def _tiny_decoder(tmp_path):
    from sdopt.decoder.tiny import load_tiny

    return load_tiny(tmp_path)


def _distill(tmp_path):
    from sdopt.decoder.distill import distill_decoder

    return distill_decoder(tmp_path / "model", tmp_path / "out")


def _train_shapes(tmp_path):
    from sdopt.shapes.train import train_shapes

    return train_shapes(tmp_path / "out")


@pytest.mark.parametrize("entry", [_unet_flops, _vae_flops, _tiny_decoder, _distill, _train_shapes])
def test_every_diffusers_model_import_refuses_an_incompatible_pair_in_one_line(tmp_path, monkeypatch, entry):
    """The bench's FLOP counts, the tiny decoder, distill-decoder and train-shapes imported Diffusers' models without the
    check every torch load makes: beside Transformers 4.47 they stopped with Diffusers' own ImportError, deep inside."""
    import sys
    import types

    from sdopt.errors import SdoptError
    from sdopt.runtime import versions

    class Unimportable(types.ModuleType):  # what Diffusers 0.37 is beside Transformers 4.47
        def __getattr__(self, name):
            raise ImportError("cannot import name 'Dinov2WithRegistersConfig' from 'transformers'")

    monkeypatch.setattr(versions, "library_versions", lambda *names: {"diffusers": "0.37.0", "transformers": "4.47.1"})
    monkeypatch.setitem(sys.modules, "diffusers", Unimportable("diffusers"))
    with pytest.raises(SdoptError, match=r"^diffusers 0\.37\.0 needs transformers 4\.48 or newer, not 4\.47\.1"):
        entry(tmp_path)
    assert not (tmp_path / "out").exists()
