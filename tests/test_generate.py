import hashlib

import numpy as np
import pytest

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.cli import main

from conftest import SMALL


def test_result_carries_images_latents_timings_and_memory(tiny_pipeline):
    result = tiny_pipeline.generate(GenerateRequest(**SMALL, num_images=2, scheduler="ddim"))
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    assert result.latents.shape == (2, 4, 8, 8) and result.latents.dtype == np.float32
    assert np.isfinite(result.latents).all()
    t = result.timings
    assert len(t.unet_steps) == SMALL["steps"]
    assert t.text_encoder > 0 and t.vae_decoder > 0 and all(s > 0 for s in t.unet_steps)
    assert t.total >= t.text_encoder + t.unet_total + t.vae_decoder
    # The process holds at least the model and torch itself: a real RSS reading, not a placeholder.
    assert result.peak_memory_kind == "rss" and result.peak_memory_bytes > 50 * 2**20


def test_same_seed_same_latents_other_seed_differs(tiny_pipeline):
    a = tiny_pipeline.generate(GenerateRequest(**SMALL))
    b = tiny_pipeline.generate(GenerateRequest(**SMALL))
    c = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "seed": 8}))
    assert np.array_equal(a.latents, b.latents)
    assert not np.allclose(a.latents, c.latents)


def test_several_prompts_are_prompt_major(tiny_pipeline):
    both = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "prompt": ["a cat", "a dog"]}, num_images=1))
    assert both.latents.shape[0] == 2
    # Without guidance there is no negative pass, and the result differs from the guided one.
    unguided = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "guidance_scale": 1.0}))
    guided = tiny_pipeline.generate(GenerateRequest(**SMALL))
    assert not np.allclose(unguided.latents, guided.latents)


def test_bf16_on_cpu_runs_and_stays_close_to_fp32(tiny_model, tiny_pipeline):
    fp32 = tiny_pipeline.generate(GenerateRequest(**SMALL))
    bf16 = sdopt.load(tiny_model, precision="bf16").generate(GenerateRequest(**SMALL))
    a = np.asarray(fp32.images[0], dtype=float)
    b = np.asarray(bf16.images[0], dtype=float)
    psnr = 10 * np.log10(255**2 / max(((a - b) ** 2).mean(), 1e-12))
    print(f"bf16 vs fp32 PSNR {psnr:.1f} dB")
    assert np.isfinite(bf16.latents).all()
    assert psnr > 20


@pytest.mark.parametrize("flags,warns", [({"avx2", "fma"}, True), ({"avx512f", "avx512_bf16"}, False), ({"amx_bf16"}, False)])
def test_bf16_warns_only_where_the_cpu_would_emulate_it(tiny_model, monkeypatch, flags, warns):
    import warnings

    import sdopt.hardware

    monkeypatch.setattr(sdopt.hardware, "cpu_flags", lambda: frozenset(flags))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdopt.load(tiny_model, precision="bf16")
    emulated = [w for w in caught if "PyTorch emulates it" in str(w.message)]
    assert bool(emulated) == warns


@pytest.mark.parametrize("cap,warns", [("AVX2", True), ("avx512_core_vnni", True), ("AVX512_CORE_BF16", False), ("ALL", False)])
def test_bf16_warns_where_the_onednn_cap_leaves_it_emulated(tiny_model, monkeypatch, cap, warns):
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512-BF16 CPU: torch's oneDNN emulates bf16 (tiny model, 64x64: VAE decode 401 ms
    against 25 uncapped, 2-core AMD EPYC Zen 4), and no warning came: sdopt read /proc/cpuinfo's flags, not the cap's."""
    import warnings

    import sdopt.hardware

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}), raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdopt.load(tiny_model, precision="bf16")
    assert any("PyTorch emulates it" in str(w.message) for w in caught) == warns


def test_fp16_on_cpu_is_refused(tiny_model):
    with pytest.raises(SdoptError, match="fp16 is not supported on cpu"):
        sdopt.load(tiny_model, precision="fp16")


def test_unknown_scheduler_lists_the_known_ones(tiny_pipeline):
    with pytest.raises(SdoptError, match="known schedulers: ddim, euler"):
        tiny_pipeline.generate(GenerateRequest(**{**SMALL, "scheduler": "karras_magic"}))


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m_karras", "heun", "unipc"])
def test_every_scheduler_runs(tiny_pipeline, scheduler):
    result = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "steps": 3, "scheduler": scheduler}))
    assert np.isfinite(result.latents).all()


@pytest.mark.parametrize("scheduler", [None, "euler_a", "dpmpp_2m"])
def test_a_scheduler_is_built_once_per_config_and_each_call_gets_a_fresh_copy(scheduler, monkeypatch):
    """make_scheduler ran Diffusers' from_config on every call (1-2 ms: it reads the signature of every compatible
    class), twice per generate call: a fifth to a third of the loop's own work at 64 px (measure/loop_overhead.py). It
    builds one per name and config now and hands out copies, which step as a freshly built scheduler does, to the bit,
    whatever an earlier copy went through."""
    import inspect

    import torch

    from sdopt.runtime import schedulers

    config = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.01201, "beta_schedule": "scaled_linear",
              "num_train_timesteps": 1000, "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
    fresh = schedulers.scheduler_class(scheduler, config).from_config(config, **schedulers.SCHEDULERS.get(scheduler, ("", {}))[1])
    built, real = [], schedulers.scheduler_class
    monkeypatch.setattr(schedulers, "scheduler_class", lambda *a: built.append(a) or real(*a))

    def run(s) -> torch.Tensor:
        s.set_timesteps(4, device="cpu")
        g = torch.Generator().manual_seed(0)
        x = torch.randn((1, 4, 8, 8), generator=g) * s.init_noise_sigma
        extra = {"generator": g} if "generator" in inspect.signature(s.step).parameters else {}
        for t in s.timesteps:
            s.scale_model_input(x, t)
            x = s.step(torch.randn((1, 4, 8, 8), generator=g), t, x, **extra).prev_sample
        return x

    copies = [schedulers.make_scheduler(scheduler, config) for _ in range(3)]
    assert len(built) <= 1 and len({id(c) for c in copies}) == 3
    expected = run(fresh)
    for copy in copies:  # each after the one before it ran
        assert torch.equal(run(copy), expected)


def test_cli_generate_twice_gives_identical_png_bytes(tiny_model, tmp_path, capsys):
    args = ["generate", str(tiny_model), "-p", "a lighthouse", "--seed", "3", "--steps", "3", "--scheduler", "ddim", "--height", "64", "--width", "64", "-q"]
    assert main(args + ["-o", str(tmp_path / "a.png")]) == 0
    assert main(args + ["-o", str(tmp_path / "b.png")]) == 0
    a, b = (hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.png", "b.png"))
    assert a == b
    err = capsys.readouterr().err
    assert "image(s) in" in err and "UNet 3 calls" in err


def test_cli_generates_bar_says_the_decode_after_the_last_step(tiny_model, tmp_path, capsys, bars_drawn_every):
    """After the last UNet call the bar stood full while the VAE decoded, with nothing to say so: 9 s at 256² on sd15
    (2-core EPYC), the longest silence of a generate. Its status says "decoding" until the images are decoded."""
    bars_drawn_every(0)  # every update drawn, as on a terminal where steps take seconds
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "2", "--scheduler", "ddim", "-o", str(tmp_path / "a.png")]) == 0
    drawn = [line for line in capsys.readouterr().err.replace("\r", "\n").split("\n") if line.startswith("denoising")]
    assert any("2/2" in line and "decoding" in line for line in drawn), drawn
    assert not any("decoding" in line for line in drawn if "1/2" in line or "0/2" in line)  # said when due, not before
    assert "decoding" not in drawn[-1]  # the bar's last line, drawn after the decode


def test_cli_generate_says_it_is_loading_before_the_load(tiny_model, tmp_path, capsys):
    """Nothing was on screen while the artifact loaded: 35 s for sd15's ONNX artifact (its sessions built), 8 s for its
    torch checkpoint, before the first bar. It is said as sdopt serve says it; -q says nothing."""
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "2", "-o", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert f"loading {tiny_model} ..." in err and err.index("loading") < err.index("denoising")
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "2", "-o", str(tmp_path / "b.png"), "-q"]) == 0
    assert "loading" not in capsys.readouterr().err


def test_cli_several_images_are_numbered(tiny_model, tmp_path):
    args = ["generate", str(tiny_model), "-p", "x", "--steps", "2", "--height", "64", "--width", "64", "--num-images", "2", "-q"]
    assert main(args + ["-o", str(tmp_path / "out.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-0.png", "out-1.png"]


def test_what_generate_and_load_are_given_is_checked(tiny_model, tiny_pipeline):
    """A Python caller's wrong argument is an SdoptError naming it, before any work — not a TypeError from inside."""
    from PIL import Image

    from sdopt import GenerateRequest, SdoptError

    request = GenerateRequest(prompt="x", steps=1, height=64, width=64)
    for call, message in ((lambda: tiny_pipeline.generate({"prompt": "x"}), "takes a sdopt.GenerateRequest, not dict"),
                          (lambda: tiny_pipeline.generate(request, progress=5), "progress must be a function"),
                          (lambda: sdopt.load(None), "not NoneType"),
                          (lambda: sdopt.load(tiny_model, device=None), "device=None"),
                          (lambda: sdopt.load(tiny_model, deep_cache="yes"), "deep_cache='yes': must be true, or the interval"),
                          (lambda: GenerateRequest(prompt="x", steps=2, height=64, width=64, init_image=Image.new("RGB", (64, 64)),
                                                   mask_image=Image.new("LAB", (64, 64)), strength=1.0).validate(), "a LAB image cannot be read as a mask")):
        with pytest.raises(SdoptError, match=message):
            call()
    assert sdopt.load(tiny_model, device="CPU").device == "cpu"


def test_a_closed_pipeline_refuses_to_generate(tiny_model):
    from sdopt import GenerateRequest, SdoptError

    with sdopt.load(tiny_model) as pipeline:
        pipeline.generate(GenerateRequest(prompt="x", steps=1, height=64, width=64))
    with pytest.raises(SdoptError, match="this pipeline is closed"):
        pipeline.generate(GenerateRequest(prompt="x", steps=1, height=64, width=64))


def test_close_lets_go_of_the_torch_modules_while_the_pipeline_lives_on(tiny_model, tmp_path):
    # The LoRA runtime and the token tables kept every module: close() released no memory while `pipe` was referenced.
    import gc
    import weakref

    pipeline = sdopt.load(tiny_model)
    modules = [weakref.ref(c.module) for c in pipeline.components.values()]
    pipeline.close()
    gc.collect()
    assert all(m() is None for m in modules)
    with pytest.raises(SdoptError, match="this pipeline is closed"):  # not "reads only the embeddings fused at export"
        pipeline.add_embeddings(tmp_path / "word.safetensors")


def test_a_callback_that_calls_its_own_pipeline_is_refused_not_left_waiting(tiny_model):
    # close() from a progress callback (to cancel) waited for the running call's lock in the thread that held it: the
    # caller hung for good, as did generate, unload_loras and add_embeddings called there.
    import threading

    from sdopt import GenerateRequest, SdoptError

    pipeline = sdopt.load(tiny_model)
    request = GenerateRequest(prompt="x", steps=1, height=64, width=64, scheduler="euler")
    for name, call in (("close", pipeline.close), ("generate", lambda: pipeline.generate(request)), ("unload_loras", pipeline.unload_loras)):
        raised = []

        def run():
            try:
                pipeline.generate(request, progress=lambda done, total: call())
            except SdoptError as exc:
                raised.append(str(exc))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), f"{name}() from a progress callback hangs"
        assert raised and raised[0].startswith(f"{name}() was called from inside this pipeline's running generate"), raised
    assert np.asarray(pipeline.generate(request).images[0]).shape == (64, 64, 3)  # still usable, not closed


def test_a_long_negative_prompt_is_called_one(tiny_pipeline):
    from sdopt import GenerateRequest

    warnings = tiny_pipeline.truncated_prompts(GenerateRequest(prompt="a fox", negative_prompt="dog " * 100))
    assert len(warnings) == 1 and warnings[0].startswith("negative prompt 'dog dog")


def test_a_truncation_of_guidance_that_is_off_is_said_to_do_nothing(tiny_pipeline):
    from sdopt import GenerateRequest

    result = tiny_pipeline.generate(GenerateRequest(prompt="x", steps=1, height=64, width=64, guidance_scale=1.0, guidance_end=0.5))
    assert any(w.startswith("guidance_end=0.5 is not used") for w in result.warnings)
    guided = tiny_pipeline.generate(GenerateRequest(prompt="x", steps=2, height=64, width=64, guidance_end=0.5))
    assert not any("guidance_end" in w for w in guided.warnings)


def test_a_static_batch_names_the_num_images_that_fill_it(tiny_pipeline, monkeypatch):
    """An artifact built for 2 images a call refused the default request without saying how to ask for 2."""
    monkeypatch.setattr(tiny_pipeline.manifest, "static_shapes", {"batch": 2, "height": 64, "width": 64})
    with pytest.raises(SdoptError, match=r"it takes 2 images a call, prompts x num_images: ask for num_images=2\)"):
        tiny_pipeline.check_request(GenerateRequest(**SMALL))
    tiny_pipeline.check_request(GenerateRequest(**SMALL, num_images=2))


@pytest.mark.skipif(not __import__("pathlib").Path("/dev/null").is_char_device(), reason="needs /dev/null")
def test_output_to_dev_null_is_written_there(tiny_model, capsys):
    """-o /dev/null discards the image, as any command's output there; it wrote /dev/null.png (a new file in /dev)."""
    from pathlib import Path

    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "1", "--height", "64", "--width", "64", "-q", "-o", "/dev/null"]) == 0
    assert not Path("/dev/null.png").exists() and Path("/dev/null").is_char_device()


def test_a_negative_prompt_an_unguided_request_never_reads_is_said(tiny_pipeline):
    """Guidance 1 or less (a Turbo model's 0) runs no unconditional pass: the negative prompt did nothing, silently."""
    unguided = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "guidance_scale": 1.0, "steps": 1}, negative_prompt="blurry"))
    assert any("the negative prompt is not used" in w for w in unguided.warnings)
    guided = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "steps": 1}, negative_prompt="blurry"))
    assert not any("negative prompt" in w for w in guided.warnings)


@pytest.mark.parametrize("scheduler, strength", [("pndm", None), ("heun", None), ("euler", None), ("euler", 0.5)])
def test_unet_calls_is_the_total_progress_reports(tiny_pipeline, scheduler, strength):
    """What a progress bar is given before the call (PNDM, SD 1.5's own scheduler, makes one call more than its steps:
    sdopt generate's bar moved from 4 to 5 at the first call)."""
    from PIL import Image

    image = {"init_image": Image.new("RGB", (64, 64), (90, 120, 200)), "strength": strength} if strength else {}
    request = GenerateRequest(**{**SMALL, "steps": 4}, scheduler=scheduler, **image)
    totals = []
    tiny_pipeline.generate(request, progress=lambda done, total: totals.append(total))
    assert set(totals) == {tiny_pipeline.unet_calls(request)} and len(totals) == totals[0]
    assert tiny_pipeline.unet_calls(request) == {"pndm": 5, "heun": 7, "euler": 2 if strength else 4}[scheduler]


def test_attention_slicing_warns_that_it_costs_memory(tiny_model):
    """--attention-slicing's help said "less memory", but it swaps PyTorch's scaled-dot-product attention (which never holds
    a whole attention matrix) for Diffusers' sliced attention: on the tiny model, peak RSS 730 -> 1,128 MiB at 512x512 and
    past 8 GiB (from 1,099 MiB) at 1024x1024, 4x slower. It still runs; the load says what it costs."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = sdopt.load(tiny_model, attention_slicing=True)
    assert any("uses more memory, not less" in str(w.message) for w in caught)
    assert {type(p).__name__ for p in pipe.components["unet"].module.attn_processors.values()} == {"SlicedAttnProcessor"}


def test_loading_leaves_the_hosts_progress_bars_as_they_were(tiny_model):
    # A torch load turned Diffusers' and Transformers' progress bars off for the whole process, for good: an app or
    # notebook that embeds sdopt lost its own pipelines' and downloads' bars after its first sdopt.load.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    libraries = (hf_logging, diffusers_logging)
    before = [lib.is_progress_bar_enabled() for lib in libraries]
    try:
        for enabled in (True, False):
            for lib in libraries:
                lib.enable_progress_bar() if enabled else lib.disable_progress_bar()
            sdopt.load(tiny_model).close()
            assert [lib.is_progress_bar_enabled() for lib in libraries] == [enabled, enabled]
    finally:
        for lib, was in zip(libraries, before):
            lib.enable_progress_bar() if was else lib.disable_progress_bar()


def test_messages_of_features_a_onednn_cap_hides_name_the_cap_not_the_cpu(tiny_model, monkeypatch):
    """Under ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 VNNI/BF16 CPU, the bf16 warning, the "of peak" probe's note, the
    int8 saturation warning and the overflow fix's recorded reason said the CPU had no AVX512-BF16 / VNNI: it has them,
    and the cap hides them. Without a cap (or on a CPU that truly lacks them) they still speak of the CPU."""
    import types
    import warnings

    import sdopt.hardware
    from sdopt.bench.flops import probe_precision
    from sdopt.runtime.int8_saturation import warn_if_int8_may_saturate

    def messages() -> list[str]:
        unfixed = types.SimpleNamespace(components={"unet": types.SimpleNamespace(quantization={"scheme": "int8-static"})})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sdopt.load(tiny_model, precision="bf16")
            warn_if_int8_may_saturate(unfixed)
        said = [str(w.message) for w in caught if "emulates" in str(w.message) or "saturate" in str(w.message)]
        return said + [probe_precision("bf16", "cpu")[1], sdopt.hardware.int8_overflow_by_cpu()[1]]

    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
    capped = messages()
    assert len(capped) == 4
    for said in capped:
        assert "ONEDNN_MAX_CPU_ISA=AVX2 hides this CPU's avx512_" in said and "has no" not in said, said
    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: frozenset({"avx2", "fma"}))  # a genuine AVX2 CPU
    genuine = messages()
    assert len(genuine) == 4
    for said in genuine:
        assert "has no" in said and "ONEDNN" not in said, said
