"""Bad input: a clear one-line error and a non-zero exit, never a traceback."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdopt.cli import main


def _run(*args):
    proc = subprocess.run([sys.executable, "-m", "sdopt.cli", *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _gen(model, *extra):
    return ["generate", str(model), "-p", "x", "--steps", "2", "--height", "64", "--width", "64", "-o", "/tmp/never.png", *extra]


@pytest.mark.parametrize(
    "extra,message",
    [
        # each names the flag typed, as the README says errors do (they said height=100, steps=0, guidance_scale=-2.0)
        (["--height", "100"], "--height 100: must be a multiple of 8"),
        (["--width", "4096"], "--width 4096: must be a multiple of 8 between 64 and 2048"),
        (["--steps", "0"], "--steps 0: must be an integer from 1 to 1000"),
        (["--num-images", "0"], "--num-images 0: must be an integer from 1 to 64"),
        (["--seed", "-1"], "--seed -1: must be an integer from 0 to"),
        (["--cache-interval", "0"], "--cache-interval 0: must be an integer from 1 (no caching)"),
        (["--guidance-end", "0"], "--guidance-end 0.0: must be a number in (0, 1]"),
        # the tiny model's own PNDM (SD 1.5's) with steps_offset 1: timestep 1000 was an IndexError after the whole run
        (["--steps", "1000"], "would step at timestep 1000, past the 1000 it was trained on: ask for 999 or fewer"),
        (["--steps", "1000", "--scheduler", "ddim"], "DDIMScheduler on this checkpoint's schedule"),
        (["--guidance", "-2"], "--guidance -2.0: must be a finite number from 0 to 50"),
        # the request field's name (guidance_scale=, in this very error; Diffusers' and the Python API's) is a flag too
        (["--guidance-scale", "-2"], "must be a finite number from 0 to 50"),
        (["--scheduler", "nope"], "known schedulers: ddim, euler, euler_a"),
        (["--scheduler", "tcd", "--eta", "2"], "--eta 2.0: must be a number from 0 to 1"),
        (["--precision", "fp16"], "fp16 is not supported on cpu by the torch backend"),
        # the flags typed, not the Python keywords (it said "masked_content='noise' ...: give mask_image with it")
        # a second -n replaced the first, silently; one per prompt is taken
        (["-n", "blurry", "-n", "grey"], "2 negative prompts for 1 prompts: give one negative prompt, or one per prompt"),
        (["--masked-content", "noise"], "--masked-content noise is what inpainting starts from under the mask: give --mask with it"),
    ],
)
def test_bad_generate_arguments(tiny_model, capsys, extra, message):
    assert main(_gen(tiny_model, *extra)) == 2
    assert message in capsys.readouterr().err


def test_the_last_timestep_check_sets_a_schedule_once_per_config_and_steps(tiny_model, monkeypatch):
    """It set the timesteps of the scheduler built for the check on every request; Diffusers' Euler, DPM++, Heun, LMS
    and UniPC warn on each call (numpy's copy=), which doubled the suite's warnings. A refusal is still said each time."""
    from diffusers import EulerDiscreteScheduler

    from sdopt.errors import SdoptError
    from sdopt.request import GenerateRequest
    from sdopt.runtime.schedulers import check_steps, make_scheduler

    config = json.loads((tiny_model / "scheduler" / "scheduler_config.json").read_text())
    calls, real = [], EulerDiscreteScheduler.set_timesteps
    monkeypatch.setattr(EulerDiscreteScheduler, "set_timesteps", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    for _ in range(3):
        check_steps(make_scheduler("euler", config), GenerateRequest(prompt="x", steps=37))
    assert len(calls) <= 1  # none where another test in this process checked the same already
    for _ in range(2):
        with pytest.raises(SdoptError, match="would step at timestep 1000"):
            check_steps(make_scheduler(None, config), GenerateRequest(prompt="x", steps=1000))


@pytest.mark.parametrize("named", ["AutoencoderKL", "StableDiffusionPipeline", "load_image", 7])
def test_a_scheduler_class_that_is_no_scheduler_is_refused_in_one_line(tiny_model, named):
    """A checkpoint's scheduler class is looked up in diffusers by the name its model_index.json or scheduler config
    gives: a model class was built from the scheduler's config (AutoencoderKL; UNet2DConditionModel at SD 1.5's size)
    and failed on the first step ("no attribute set_timesteps"), a pipeline class failed to build; both tracebacks."""
    from sdopt.errors import SdoptError
    from sdopt.runtime.schedulers import make_scheduler

    config = json.loads((tiny_model / "scheduler" / "scheduler_config.json").read_text())
    with pytest.raises(SdoptError, match="is not a Diffusers scheduler|is not in this diffusers version"):
        make_scheduler(None, {**config, "_class_name": named})


def test_a_request_the_artifact_refuses_is_said_before_any_progress_bar(tiny_model, capsys):
    """A refusal from the artifact's checks (an OpenVINO static shape, Clip skip past the text encoder's layers) came
    after an empty "denoising 0/N" bar."""
    assert main(_gen(tiny_model, "--clip-skip", "12")) == 2
    err = capsys.readouterr().err
    assert "text encoder has 5 layers" in err and "denoising" not in err


@pytest.mark.parametrize(
    "target,extra,message",
    [
        ("openvino", ["--opset", "17"], "--to openvino does not take --opset; onnx and tensorrt do"),
        ("openvino", ["--optimize"], "--to openvino does not take --optimize; onnx does"),
        ("openvino", ["--static"], "--to openvino does not take --static; tensorrt does. For --static: give --height and --width (and --batch)"),
        ("onnx", ["--height", "64", "--width", "64"], "--to onnx does not take --height, --width; openvino and tensorrt do"),
        # flags that go with different exporters: each flag's (it read as if openvino took none of the three)
        ("onnx", ["--static", "--height", "64", "--width", "64"],
         "--to onnx does not take --height, --width (openvino and tensorrt take them); --static (tensorrt takes it)"),
    ],
)
def test_exporters_refuse_options_they_do_not_take(tiny_model, tmp_path, capsys, target, extra, message):
    out = tmp_path / "o"
    assert main(["export", str(tiny_model), "--to", target, "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_export_opset_0_is_refused_not_read_as_the_default(tiny_model, tmp_path, capsys):
    """--opset 0 exported at opset 18 without a word (0 read as "not given"), while --opset 5 was refused."""
    out = tmp_path / "o"
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(out), "--opset", "0"]) == 2
    assert "--opset 0: choose an opset between 14 and 21" in capsys.readouterr().err
    assert not out.exists()


def test_not_an_artifact(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run("generate", str(tmp_path / "empty"), "-p", "x", "-o", str(tmp_path / "o.png"))
    assert proc.returncode == 2 and "is not an sdopt artifact" in proc.stderr
    proc = _run("inspect", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_manifest_that_fails_the_schema(tiny_model, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    data = json.loads((broken / "sdopt.json").read_text())
    data["precision"] = "fp12"
    (broken / "sdopt.json").write_text(json.dumps(data))
    assert main(["inspect", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "does not follow the sdopt manifest schema" in err and "precision" in err
    # A quantization record without its scheme (sdopt writes one always) reached the bench's and images' label, which
    # read scheme.endswith(...): an AttributeError traceback (walk qa60). The schema asks for scheme and backend.
    data["precision"] = "fp32"
    data["components"]["unet"]["quantization"] = {"backend": "torchao"}
    (broken / "sdopt.json").write_text(json.dumps(data))
    assert main(["inspect", str(broken)]) == 2
    assert "at components/unet/quantization: 'scheme' is a required property" in capsys.readouterr().err


def test_a_damaged_model_index_is_said_before_an_export_does_its_work(tiny_model, tmp_path, capsys, monkeypatch):
    """A checkpoint whose model_index.json is not JSON (a download cut short) was exported component by component, then
    ended in a JSONDecodeError traceback where the export copies that file (walk qa89); generate said it in one line."""
    from sdopt.export import run

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", ')
    monkeypatch.setattr(run, "prepare_source", lambda *a, **k: pytest.fail("the export began its work"))
    assert main(["export", str(broken), "--to", "onnx", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model_index.json is not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["broken"]


def test_component_file_changed_after_export_is_named(tiny_model, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model, tampered)
    weights = tampered / "unet" / "diffusion_pytorch_model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert main(_gen(tampered)) == 2
    err = capsys.readouterr().err
    assert "diffusion_pytorch_model.safetensors does not match the sha256" in err and "unet" in err


def test_init_model_into_existing_folder_is_refused(tiny_model, capsys):
    assert main(["init-model", "tiny", str(tiny_model)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_unknown_zoo_model_is_an_argparse_error():
    proc = _run("init-model", "sd99", "/tmp/x")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_only_sdopts_own_warnings_read_as_sdopts():
    # Ours read like our errors; a library's keeps its file and line (torchao's SyntaxWarning on Python 3.12
    # printed as "sdopt: warning: invalid escape sequence" looked like sdopt's own).
    import sdopt.runtime.load as ours
    from sdopt.cli import _format_warning

    assert _format_warning("bf16 is emulated here", UserWarning, ours.__file__, 10) == "sdopt: warning: bf16 is emulated here\n"
    other = _format_warning("invalid escape sequence '\\.'", SyntaxWarning, "/tmp/site/torchao/quantization/quant_api.py", 1542)
    assert other.startswith("/tmp/site/torchao/quantization/quant_api.py:1542: SyntaxWarning: invalid escape sequence")


def test_a_reader_that_stops_reading_ends_the_command_quietly(tiny_model):
    """`sdopt inspect MODEL | head -1`: the pipe's reader is gone before sdopt writes (its end closed
    first, so this does not race): exit 141 as a shell reports it, and no traceback."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "sdopt.cli", "inspect", "--no-verify", str(tiny_model)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_a_command_started_with_stdout_closed_does_its_work_without_a_traceback(tiny_model):
    """`sdopt inspect MODEL >&-` (a service or job runner that closes what it does not read): Python's sys.stdout is then
    None, and the flush after the command raised an AttributeError traceback with exit 1 though the work was done."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "sdopt.cli", "inspect", "--no-verify", str(tiny_model)], stderr=subprocess.PIPE,
                          text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_an_output_inside_the_input_is_refused_and_the_input_stays_whole(tiny_model, tmp_path, capsys):
    """Written inside the input, the output would be an unlisted folder in it: the input would fail its own verification."""
    inside = tiny_model / "unet" / "onnx"
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(inside)]) == 2
    assert f"the output {inside} is inside the input {tiny_model}" in capsys.readouterr().err
    assert not inside.exists()
    assert main(["inspect", str(tiny_model)]) == 0  # still verifies


def test_generate_refuses_stdout_as_its_image_file(tiny_model, tmp_path, capsys, monkeypatch):
    """`generate -o -` (as a script asks for stdout) wrote a file named -.png in the working directory, and -o /dev/stdout
    a file /dev/stdout.png; the image files' paths are what generate prints on stdout: refused before any work."""
    monkeypatch.chdir(tmp_path)
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "1", "-o", "-", "-q"]) == 2
    assert "-o -: generate writes image files and prints their paths on stdout" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_output_file_inside_the_input_is_refused_and_the_input_stays_whole(tiny_model, capsys):
    """init-lora, init-embedding and generate -o wrote their file into the model's component folder: the model then
    failed its own verification ("is in the artifact but not listed in sdopt.json")."""
    for argv in (["init-lora", str(tiny_model), str(tiny_model / "unet" / "l.safetensors")],
                 ["init-embedding", str(tiny_model), str(tiny_model / "text_encoder" / "e.safetensors")],
                 ["generate", str(tiny_model), "-p", "x", "--steps", "1", "-o", str(tiny_model / "vae" / "x.png"), "-q"]):
        assert main(argv) == 2, argv
        assert f"is inside the input {tiny_model}: choose an output path outside the input" in capsys.readouterr().err
    assert main(["inspect", str(tiny_model)]) == 0  # still verifies


def test_a_quoted_tilde_in_an_output_path_is_the_home_folder(tiny_model, tmp_path, monkeypatch, capsys):
    """A quoted ~ (a script's "~/out", a config file) reached sdopt as it is: model folders and artifact outputs read it as
    the home folder, but init-lora, generate -o, bench -o and --work made a folder named ~ in the working directory, one
    an `rm -rf ~` to tidy up would take the home folder with; init-model wrote to the home folder and printed ./~/NAME."""
    from sdopt.cli import build_parser

    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    assert main(["init-lora", str(tiny_model), "~/l.safetensors"]) == 0
    assert capsys.readouterr().out == f"{home / 'l.safetensors'}\n" and not (here / "~").exists()
    for argv, dest in ((["generate", "m", "-p", "x", "-o", "~/x.png"], "output"), (["bench", "a", "-o", "~/r", "--work", "~/w"], "work"),
                       (["bench", "a", "-o", "~/r"], "output"), (["optimize", "m", "-o", "~/o"], "output"), (["init-model", "tiny", "~/t"], "out"),
                       (["distill-decoder", "m", "-o", "~/d"], "output"), (["serve", "m", "--image-dir", "~/i"], "image_dir")):
        assert getattr(build_parser().parse_args(argv), dest) == str(home / argv[-1][2:]), argv


def test_a_quoted_tilde_in_an_input_path_is_the_home_folder(tmp_path, monkeypatch):
    """Every flag that names a file or folder reads a quoted ~ as home, as model folders and outputs did: --init-image,
    --mask, --parameters-from, --prompts, gate's reports, clean, --vae-decoder, profile files and the rest took it
    literally, and a file in the home folder was 'not found'."""
    from sdopt.cli import build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    for argv, dests in (
            (["generate", "~/m", "-p", "x", "-o", "o", "--init-image", "~/i", "--mask", "~/k", "--parameters-from", "~/p",
              "--lora", "~/l", "--embedding", "~/e"], ("artifact", "init_image", "mask", "parameters_from", "lora", "embedding")),
            (["bench", "~/a", "--reference", "~/r", "-o", "o", "--prompts", "~/p", "--profile", "~/f.toml", "--init-image", "~/i",
              "--mask", "~/k"], ("artifacts", "reference", "prompts", "profile", "init_image", "mask")),
            (["bench", "--build-from", "~/m", "--work", "w", "-o", "o"], ("build_from",)),
            (["gate", "~/c", "--baseline", "~/b", "--rules", "~/r", "--markdown", "~/m"], ("current", "baseline", "rules", "markdown")),
            (["gate", "~/c", "--profile", "~/f.toml"], ("profile",)),
            (["clean", "~/t"], ("folder",)), (["inspect", "~/a"], ("artifact",)),
            (["export", "~/m", "--to", "onnx", "-o", "~/o", "--vae-decoder", "~/d", "--calibration-prompts", "~/p"],
             ("model", "output", "vae_decoder", "calibration_prompts")),
            (["quantize", "~/m", "--scheme", "int8", "-o", "~/o", "--calibration-prompts", "~/p"], ("model", "output", "calibration_prompts")),
            (["optimize", "~/m", "-o", "o", "--prompts", "~/p"], ("model", "prompts")),
            (["distill-decoder", "~/m", "-o", "o", "--prompts", "~/p", "--init", "~/i"], ("model", "prompts", "init")),
            (["serve", "~/m", "--lora-dir", "~/l", "--embeddings-dir", "~/e"], ("artifact", "lora_dir", "embeddings_dir")),
            (["init-lora", "~/m", "l"], ("model",)), (["init-embedding", "~/m", "e"], ("model",))):
        parsed = build_parser().parse_args(argv)
        for dest in dests:
            value = getattr(parsed, dest)
            assert all(v.startswith(str(tmp_path)) for v in (value if isinstance(value, list) else [value])), (argv[0], dest, value)
    from sdopt.cli.common import path_list

    assert path_list("~/a.png, ~/b.png") == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]  # --calibration-images


def test_a_value_that_starts_with_a_dash_is_said_how_to_write(capsys):
    """argparse reads -o -x.png's value as a flag and said only "expected one argument": the error says to write
    --output=VALUE, which argparse always reads as the value."""
    from sdopt.cli import build_parser

    for argv, flag in ((["generate", "m", "-o", "-x.png"], "--output"), (["generate", "m", "-o", "o", "-p", "-dark"], "--prompt")):
        with pytest.raises(SystemExit):
            main(argv)
        assert f"expected one argument (a value that starts with '-' is written {flag}=VALUE)" in capsys.readouterr().err
    parsed = build_parser().parse_args(["generate", "m", "--output=-x.png", "--prompt=-dark"])
    assert (parsed.output, parsed.prompt) == ("-x.png", ["-dark"])
    # a flag whose value is optional takes none, and the word was only "unrecognized"
    with pytest.raises(SystemExit):
        main(["generate", "m", "-o", "o", "--compile", "-x"])
    assert "unrecognized arguments: -x (a value that starts with '-' is written --compile=VALUE)" in capsys.readouterr().err


def test_generate_output_names(tiny_model, tmp_path, capsys):
    """No suffix: .png, as for several images; a suffix no image format has is refused before any work (it failed
    only when saving, after the generation); without a size, the model's own (the tiny model's 64x64, as Diffusers)."""
    from PIL import Image

    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "1", "-o", str(tmp_path / "plain"), "-q"]) == 0
    assert Image.open(tmp_path / "plain.png").size == (64, 64)
    assert main([*_gen(tiny_model)[:-1], str(tmp_path / "o.xyz")]) == 2
    assert ".xyz is not an image format sdopt can write" in capsys.readouterr().err


def test_an_interrupted_image_save_leaves_the_old_image_whole(tiny_model, tmp_path, monkeypatch, capsys):
    """-o wrote straight into the file: Ctrl-C (or SIGTERM) while saving left half a PNG where the old image was."""
    from PIL import Image

    out = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(out)
    old = out.read_bytes()

    def interrupted(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "1", "-o", str(out), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"] and out.read_bytes() == old


def test_an_interrupted_save_of_several_images_leaves_the_old_set_whole(tiny_model, tmp_path, monkeypatch, capsys):
    """--num-images 2 over a run's two images, interrupted while saving the second: both old ones stay, none is new
    (each was renamed into place as it was saved: a set mixing this run's first image with the last run's second)."""
    from PIL import Image

    from sdopt.cli.common import output_paths

    paths = output_paths(tmp_path / "a.png", 2)
    for i, path in enumerate(paths):
        Image.new("RGB", (64, 64), (i, 2, 3)).save(path)
    old = [p.read_bytes() for p in paths]
    real_save, saved = Image.Image.save, []

    def second_interrupted(self, fp, *args, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", second_interrupted)
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "1", "--num-images", "2", "-o", str(tmp_path / "a.png"), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths) and [p.read_bytes() for p in paths] == old


def test_a_full_disk_while_saving_says_what_to_do(tiny_model, tmp_path, monkeypatch, capsys):
    """generate -o on a full disk said only "No space left on device" (walk qa53), where every other command's full disk
    says to free space or write elsewhere; gate's --markdown/--json said to give a writable folder."""
    import errno

    from PIL import Image

    from sdopt.cli.common import write_text_file
    from sdopt.errors import SdoptError

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "1", "-o", str(tmp_path / "a.png"), "-q"]) == 2
    assert capsys.readouterr().err.endswith("No space left on device (nothing was left half written); free some space, or choose an "
                                            "output path on another disk\n")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Path, "write_text", lambda *a, **k: full(None, None))
    with pytest.raises(SdoptError, match="cannot write it [(]No space left on device[)]; free some space"):
        write_text_file(tmp_path / "g.md", "x")


def test_an_image_past_the_file_size_limit_says_whose_limit(tiny_model, tmp_path, monkeypatch, capsys):
    """generate -o under ulimit -f said only "File too large" (Python ignores SIGXFSZ: the write fails with EFBIG)."""
    import errno
    import resource

    from PIL import Image

    def too_large(self, fp, *args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(Image.Image, "save", too_large)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (3 * 2**20, resource.RLIM_INFINITY) if which == resource.RLIMIT_FSIZE
                        else (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "1", "-o", str(tmp_path / "a.png"), "-q"]) == 2
    assert capsys.readouterr().err.endswith("File too large (nothing was left half written): a file would pass this process's file-size "
                                            "limit (3.0 MiB: ulimit -f); raise the limit (ulimit -f unlimited)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_warning_made_an_error_is_one_line_naming_the_setting(tmp_path, capsys, monkeypatch):
    """Under PYTHONWARNINGS=error, generate --scheduler euler ended in a traceback of numpy's DeprecationWarning (raised in
    Diffusers' Euler set_timesteps) that never said the interpreter's setting had made it an error. One line now: the
    warning, where it was raised, the setting, and how to let it be; exit 2. Stood in for: a command's call raising one."""
    import sdopt.zoo.lora

    def deprecated(*args, **kwargs):
        raise DeprecationWarning("__array__ implementation doesn't accept a copy keyword")

    monkeypatch.setattr(sdopt.zoo.lora, "write_lora", deprecated)
    assert main(["init-lora", str(tmp_path / "model"), str(tmp_path / "l.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdopt: error: DeprecationWarning: __array__ implementation doesn't accept a copy keyword (raised at ")
    assert err.endswith("a warning turned into an error by python -W error or PYTHONWARNINGS=error; let warnings be warnings "
                        "(PYTHONWARNINGS=default), or leave this one out (-W ignore::DeprecationWarning)\n") and err.count("\n") == 1


def test_a_deleted_working_folder_is_one_line_before_any_work(tmp_path):
    """Run from a folder that was deleted (a CI step after its checkout was removed, a shell left in a cleaned folder),
    init-model with an absolute output ended in transformers' FileNotFoundError traceback at import (or oneMKL's "FATAL
    ERROR: Cannot load libtorch_cpu.so"), and generate the same: one line that says so now, exit 2, nothing written."""
    import os

    gone = tmp_path / "gone"
    gone.mkdir()

    def from_a_deleted_folder():
        os.chdir(gone)
        os.rmdir(gone)

    proc = subprocess.run([sys.executable, "-m", "sdopt.cli", "init-model", "tiny", str(tmp_path / "tiny")], capture_output=True, text=True,
                          timeout=300, preexec_fn=from_a_deleted_folder)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("sdopt: error: the current folder no longer exists") and proc.stderr.count("\n") == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_two_writers_of_one_output_each_replace_it_whole(tmp_path):
    """Two `generate -o same.png` at once (walk qa54) shared the partial file .same.png.partial: the second truncated the
    first's half-written image and renamed it into place, and the first then failed with a FileNotFoundError traceback.
    Each writer has its own partial: the one that finishes last replaces the file, whole, and neither fails."""
    from sdopt.outputs import files_written_whole

    out = tmp_path / "same.png"
    with files_written_whole([out]) as (first,):
        first.write_bytes(b"first, half")
        with files_written_whole([out]) as (second,):  # the other process, finishing while the first still writes
            second.write_bytes(b"second, whole")
        assert out.read_bytes() == b"second, whole"
        with open(first, "ab") as f:
            f.write(b" and the rest")
    assert out.read_bytes() == b"first, half and the rest" and [p.name for p in tmp_path.iterdir()] == ["same.png"]


def test_a_killed_writers_partial_files_are_removed_by_the_next_write(tmp_path):
    """`sdopt generate --num-images 16 -o x.png` SIGKILLed while saving left 16 hidden .x-N.png.PID-XXXXXX.partial files
    (walk qa94), and no later command removed them: each name was its writer's own. The next write of those paths removes
    a dead writer's partials made on this host; another host's (a shared folder) it cannot judge, and leaves."""
    import signal
    import subprocess
    import sys

    from sdopt.outputs import files_written_whole

    paths = [tmp_path / "x-0.png", tmp_path / "x-1.png"]
    code = ("import os, signal, sys\nfrom pathlib import Path\nfrom sdopt.outputs import files_written_whole\n"
            "with files_written_whole([Path(p) for p in sys.argv[1:]]) as partials:\n"
            "    partials[0].write_bytes(b'half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code, *map(str, paths)]).returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".x-*.partial"))) == 2  # what the killed save left
    other_host = tmp_path / ".x-0.png.00000000-1-abcdef.partial"
    other_host.write_bytes(b"another host's, still writing")
    with files_written_whole(paths) as partials:
        for partial in partials:
            partial.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_host.name, "x-0.png", "x-1.png"]


def test_strength_without_an_init_image(tiny_model, tmp_path, capsys):
    """--strength alone is refused; an img2img image's parameters without its init image are said to make another picture."""
    from PIL import Image

    assert main([*_gen(tiny_model), "--strength", "0.5"]) == 2
    assert "give --init-image IMAGE with it" in capsys.readouterr().err
    Image.new("RGB", (64, 64), (90, 20, 200)).save(tmp_path / "init.png")
    made = tmp_path / "i2i.png"
    assert main(["generate", str(tiny_model), "-p", "x", "--steps", "2", "--init-image", str(tmp_path / "init.png"), "--strength", "0.6", "-o", str(made), "-q"]) == 0
    assert "Denoising strength: 0.6" in Image.open(made).info["parameters"]
    capsys.readouterr()
    assert main(["generate", str(tiny_model), "--parameters-from", str(made), "-o", str(tmp_path / "again.png")]) == 0
    assert "was made from an init image" in capsys.readouterr().err
    assert "Denoising strength" not in Image.open(tmp_path / "again.png").info["parameters"]


def test_a_hires_fix_pictures_denoising_strength_is_not_said_to_be_an_init_images(tiny_model, tmp_path, capsys):
    """AUTOMATIC1111's txt2img with hires fix writes "Denoising strength" for its second pass: --parameters-from said the
    picture was made from an init image. The hires keys are named as not taken; the strength is not used."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a red fox\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.5, "
                                "Hires upscale: 2, Hires upscaler: Latent")
    png = tmp_path / "hires.png"
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    assert main(["generate", str(tiny_model), "--parameters-from", str(png), "-q", "-o", str(tmp_path / "o.png")]) == 0
    err = capsys.readouterr().err
    assert "says Hires upscale, Hires upscaler, which this request does not take" in err and "init image" not in err
    assert "Denoising strength" not in Image.open(tmp_path / "o.png").info["parameters"]


def test_a_value_an_images_parameters_give_that_no_request_takes_is_said_to_come_from_the_image(tiny_model, tmp_path, capsys):
    """An AUTOMATIC1111 PNG can say "Size: 60x60" (or Steps: 500): refused naming the image and the flag that overrides it,
    not as if it had been typed; the flag given, the image's other values are taken."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a red fox\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 60x60, Model: x")
    png = tmp_path / "a1111.png"
    Image.new("RGB", (60, 60)).save(png, pnginfo=info)
    assert main(["generate", str(tiny_model), "--parameters-from", str(png), "-q", "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert f"{png}'s parameters give height=60: must be a multiple of 8" in err and "give --height and --width" in err
    assert main(["generate", str(tiny_model), "--parameters-from", str(png), "--height", "64", "--width", "64", "-q", "-o", str(tmp_path / "o.png")]) == 0
    assert "Seed: 3" in Image.open(tmp_path / "o.png").info["parameters"]
    assert main(["generate", str(tiny_model), "-p", "x", "--height", "60", "-q", "-o", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "parameters give" not in err and "--height 60: must be a multiple of 8" in err  # typed: named as the flag
    # Values that do not read: refused naming the flag, and not read at all where the flag is given (it wins)
    for i, (pair, flag, value, message) in enumerate((
            ("CFG scale: abc", "--guidance", "7", "CFG scale: 'abc' is not a number; give --guidance"),
            ("Seed: abc", "--seed", "3", "Seed: 'abc' is not an integer; give --seed"),
            ("Size: 64", "--height", "64", "Size: '64' is not WIDTHxHEIGHT (such as 512x768); give --height and --width"),
            ("Sampler: Foo", "--scheduler", "euler", "sampler 'Foo' is not available here; available: "))):
        odd = tmp_path / f"odd{i}.png"
        fields = {"CFG scale": "7", "Seed": "1", "Size": "64x64", "Sampler": "Euler", pair.split(": ")[0]: pair.split(": ")[1]}
        info = PngInfo()
        info.add_text("parameters", "a red fox\nSteps: 2, " + ", ".join(f"{k}: {v}" for k, v in fields.items()))
        Image.new("RGB", (64, 64)).save(odd, pnginfo=info)
        capsys.readouterr()
        assert main(["generate", str(tiny_model), "--parameters-from", str(odd), "-q", "-o", str(tmp_path / "q.png")]) == 2
        assert message in capsys.readouterr().err, pair
        both = [flag, value, *(["--width", "64"] if flag == "--height" else [])]
        assert main(["generate", str(tiny_model), "--parameters-from", str(odd), *both, "-q", "-o", str(tmp_path / f"q{i}.png")]) == 0, pair


def test_a_precision_no_export_of_this_backend_has_names_the_ones_that_do(tiny_onnx_artifact, capsys):
    assert main([*_gen(tiny_onnx_artifact), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "sdopt exports no onnxruntime artifact in bf16: export for openvino or tensorrt instead" in err


def test_a_killed_writer_not_yet_reaped_is_gone():
    """A zombie (killed, its parent has not waited for it) writes nothing more: its temporary folder is stale."""
    import time

    from sdopt.outputs import pid_alive

    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 30
        while "Z" not in open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1][:3] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    import os

    assert pid_alive(os.getpid())


def test_a_lora_scale_that_is_not_a_number_is_named(tiny_model, tmp_path, capsys):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    assert main([*_gen(tiny_model), "--lora", f"{lora}:abc"]) == 2
    assert "the scale 'abc' is not a number (FILE:SCALE, e.g. style.safetensors:0.8)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "optimize"])
def test_bench_and_optimize_refuse_strength_without_an_init_image(tiny_model, tmp_path, capsys, command):
    args = [str(tiny_model), "--reference", str(tiny_model)] if command == "bench" else [str(tiny_model)]
    assert main([command, *args, "--strength", "0.5", "-o", str(tmp_path / "o")]) == 2
    assert "give --init-image IMAGE with it" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("how", ["artifacts", "profile"])
def test_a_cuda_bench_without_a_cuda_gpu_is_refused_before_anything_is_built_or_run(tiny_model, tmp_path, capsys, how):
    """Each worker failed, then the report's CUDA matmul probe was a traceback ("Torch not compiled with CUDA enabled"),
    leaving raw/ behind; the cuda-h100 profile first built its ONNX artifact in --work."""
    size = ["--steps", "2", "--height", "64", "--width", "64", "--seeds", "0", "-q", "-o", str(tmp_path / "o")]
    args = ([f"{tiny_model}@fp16", "--reference", str(tiny_model), "--device", "cuda"] if how == "artifacts"
            else ["--profile", "cuda-h100", "--build-from", str(tiny_model), "--work", str(tmp_path / "work")])
    assert main(["bench", *args, *size]) == 2
    assert "device 'cuda' was asked for but torch sees no CUDA GPU here" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "work").exists()


def test_a_bench_on_a_device_this_machine_lacks_is_refused_before_anything_runs(tiny_model, tiny_ov, tmp_path, capsys):
    """--device gpu (OpenVINO's) on a machine without one: each worker failed, then the report's matmul probe asked torch for
    a device named 'gpu', a RuntimeError traceback, raw/ left behind."""
    import openvino

    if any(d.startswith("GPU") for d in openvino.Core().available_devices):
        pytest.skip("OpenVINO finds a GPU here")
    size = ["--device", "gpu", "--steps", "2", "--height", "64", "--width", "64", "--seeds", "0", "-q", "-o", str(tmp_path / "o")]
    assert main(["bench", str(tiny_ov), "--reference", str(tiny_ov), *size]) == 2
    assert "OpenVINO has no device 'GPU' on this machine" in capsys.readouterr().err
    assert main(["bench", str(tiny_ov), "--reference", str(tiny_model), *size]) == 2  # a torch reference: cpu and cuda only
    assert "the reference tiny is a torch artifact, and the torch backend does not run on device 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_cuda_device_whose_index_is_not_a_number_is_refused_by_name(tiny_model, tiny_onnx_artifact, tmp_path, capsys, monkeypatch):
    """--device cuda:x reached ONNX Runtime's provider options as int('x'): a ValueError traceback where onnxruntime-gpu is installed."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # as onnxruntime-gpu
    for model in (tiny_onnx_artifact, tiny_model):
        assert main([*_gen(model), "--device", "cuda:x"]) == 2
        assert "device 'cuda:x': name a CUDA GPU 'cuda' or 'cuda:N', N its index" in capsys.readouterr().err
    assert main(["quantize", str(tiny_model), "--scheme", "int8", "--device", "cuda:x", "-o", str(tmp_path / "q")]) == 2
    assert "device 'cuda:x': name a CUDA GPU 'cuda' or 'cuda:N', N its index" in capsys.readouterr().err
    assert main(["bench", str(tiny_model), "--reference", str(tiny_model), "--device", "cuda:x", "-o", str(tmp_path / "r")]) == 2
    assert "device 'cuda:x': name a CUDA GPU 'cuda' or 'cuda:N', N its index" in capsys.readouterr().err
    assert not (tmp_path / "q").exists() and not (tmp_path / "r").exists()


def test_int8_static_on_a_checkpoint_names_the_exports_that_take_it(tiny_model, tmp_path, capsys):
    """quantize MODEL --scheme int8-static listed the schemes torch artifacts take and not that int8-static is an
    OpenVINO or ONNX export's (walk qa42)."""
    assert main(["quantize", str(tiny_model), "--scheme", "int8-static", "-o", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "int8-static is taken by an export: sdopt export MODEL --to onnx, then sdopt quantize it --scheme int8-static --backend onnxruntime" in err
    assert "sdopt export MODEL --to openvino, then sdopt quantize it --scheme int8-static --backend nncf" in err
    assert not (tmp_path / "q").exists()


def test_quantizing_an_onnx_artifact_with_a_scheme_it_lacks_says_what_to_do_instead(tiny_onnx_artifact, tmp_path, capsys):
    assert main(["quantize", str(tiny_onnx_artifact), "--scheme", "int8", "-o", str(tmp_path / "q")]) == 2
    assert ("no backend quantizes onnxruntime artifacts with int8 on cpu; they take int8-static (--backend onnxruntime), "
            "or quantize the Diffusers checkpoint (sdopt quantize MODEL)") in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
    # With the backend named: what it takes, and no backend of another kind of artifact (none could take this one).
    assert main(["quantize", str(tiny_onnx_artifact), "--scheme", "int8", "--backend", "onnxruntime", "-o", str(tmp_path / "q")]) == 2
    assert ("the onnxruntime quantizer declares no int8 on cpu (it takes int8-static); "
            "no backend here quantizes onnxruntime artifacts with int8 on cpu") in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_an_empty_model_path_is_refused_not_read_as_the_current_folder(capsys):
    assert main(["inspect", ""]) == 2
    assert "the model path is empty" in capsys.readouterr().err


def test_a_librarys_exception_is_told_by_the_line_that_says_what_is_wrong():
    """sdopt.errors.exception_line: what every "cannot load ..." message quotes of ONNX Runtime's, OpenVINO's, the hub's,
    Ray's exceptions — one line, the informative one, never cut mid-word."""
    from sdopt.errors import exception_line

    openvino = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'x' failed at src/core.cpp:12:\n  Unable to read the model: damaged.xml\n")
    assert exception_line(openvino, skip=("Exception from", "Check '")) == "Unable to read the model: damaged.xml"
    assert exception_line(RuntimeError("Traceback ...\n  File x\nValueError: the real cause"), last=True) == "ValueError: the real cause"
    assert exception_line(KeyError()) == "KeyError" and exception_line(OSError("\n\n")) == "OSError"
    long = exception_line(ValueError("word " * 100), most=50)
    assert long.endswith(" ...") and len(long) <= 54 and "wor ..." not in long
    assert exception_line(ValueError("Check 'only this'"), skip=("Check '",)) == "Check 'only this'"  # nothing else to say


def test_a_prompt_file_that_is_not_text_is_refused(tmp_path):
    """quantize --calibration-prompts photo.png (or bench --prompts) was a UnicodeDecodeError traceback."""
    from sdopt import SdoptError
    from sdopt.prompts import read_prompts

    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(SdoptError, match="calibration prompt file .*photo.png is not UTF-8 text"):
        read_prompts(image, what="calibration prompt file")


def test_a_folder_given_as_a_prompt_file_is_not_said_to_be_missing(tmp_path):
    """quantize --calibration-prompts photos/ said 'calibration prompt file photos does not exist'."""
    from sdopt import SdoptError
    from sdopt.prompts import read_prompts

    with pytest.raises(SdoptError, match="prompt file .* is a folder: give a text file"):
        read_prompts(tmp_path, what="calibration prompt file")


def test_bench_on_ray_without_the_ray_extra_is_refused_before_anything_is_built(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if `pip install 'sdopt[ray]'` had not been run
    profile = tmp_path / "one.toml"
    profile.write_text('name = "one"\ndevice = "cpu"\n[[artifacts]]\nname = "ref"\nbackend = "torch"\nprecision = "fp32"\nreference = true\n')
    assert main(["bench", "--profile", str(profile), "--build-from", str(tiny_model), "--work", str(tmp_path / "w"), "--ray",
                 "-o", str(tmp_path / "r")]) == 2
    assert "pip install 'sdopt[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("missing", ["pandas", "matplotlib"])
@pytest.mark.parametrize("command", ["bench", "optimize"])
def test_bench_and_optimize_without_the_bench_extra_are_refused_before_anything_runs(tiny_model, tmp_path, monkeypatch, capsys,
                                                                                     command, missing):
    """A `pip install sdopt` without [bench]: the whole bench ran, then writing results.csv (pandas) or report.html's plots
    (matplotlib) ended in a traceback, and the report was lost."""
    monkeypatch.setitem(sys.modules, missing, None)  # as if `pip install 'sdopt[bench]'` had not been run
    out = tmp_path / "r"
    args = ["--reference", str(tiny_model)] if command == "bench" else ["--work", str(tmp_path / "w")]
    assert main([command, str(tiny_model), *args, "--steps", "2", "-o", str(out)]) == 2
    assert f"the Python package '{missing}', which is not installed: pip install 'sdopt[bench]'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["train-shapes", "distill-decoder"])
def test_training_without_matplotlib_is_refused_before_it_trains(tiny_model, tmp_path, monkeypatch, capsys, command):
    """Without the bench extra, train-shapes and distill-decoder trained to the end, then drawing loss.png failed with a
    traceback and the trained weights were thrown away."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    args = [str(out), "--vae-steps", "1", "--unet-steps", "1", "--images", "8"] if command == "train-shapes" else \
        [str(tiny_model), "-o", str(out), "--latents", "2", "--steps", "1", "--train-steps", "1", "--batch", "1"]
    assert main([command, *args, "-q"]) == 2
    assert "the Python package 'matplotlib', which is not installed: pip install 'sdopt[bench]'" in capsys.readouterr().err
    assert not out.exists()


def test_two_profiles_of_one_name_are_refused_as_their_reports_would_share_a_folder(tmp_path, capsys):
    """--profile a.toml --profile b.toml, both name = "box": both reports went to OUTPUT/box/, the second over the first."""
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.toml").write_text('name = "box"\ndevice = "cpu"\n')
    out = tmp_path / "r"
    assert main(["bench", str(tmp_path / "no-artifact"), "--reference", str(tmp_path / "no-reference"),
                 "--profile", str(tmp_path / "a.toml"), "--profile", str(tmp_path / "b.toml"), "--ray", "-o", str(out)]) == 2
    assert "2 profiles are named 'box'" in capsys.readouterr().err and not out.exists()


def test_an_artifact_right_after_bench_ray_is_not_taken_for_the_clusters_address(tiny_model, tmp_path, capsys):
    """--ray takes an optional ADDRESS: `--ray ARTIFACT --reference REF` read the artifact as the address, and the error
    said "give the artifacts to measure", which the user had."""
    assert main(["bench", "--ray", str(tiny_model), "--reference", str(tiny_model), "-o", str(tmp_path / "r")]) == 2
    assert "a path, not a Ray cluster's address: put the artifacts before --ray" in capsys.readouterr().err


def test_an_error_names_an_argument_as_its_caller_gave_it(tiny_model, capsys):
    """sdopt.load(path, reshape=True) on a torch artifact said "does not take --reshape" to a Python caller, who passed no
    flag: the keyword there, the flag on the command line (sdopt.errors.argument, one switch set by cli.main)."""
    import sdopt

    with pytest.raises(sdopt.SdoptError) as caught:
        sdopt.load(tiny_model, reshape=True, cpu_offload=True)
    assert str(caught.value) == "the torch backend does not take reshape; openvino does"
    with pytest.raises(sdopt.SdoptError, match=r"^threads=0: must be a positive number of threads$"):
        sdopt.load(tiny_model, threads=0)
    assert main([*_gen(tiny_model), "--reshape"]) == 2
    assert "sdopt: error: the torch backend does not take --reshape; openvino does" in capsys.readouterr().err
    with pytest.raises(sdopt.SdoptError, match="does not take reshape"):  # main's switch is off again once it returns
        sdopt.load(tiny_model, reshape=True)


@pytest.mark.parametrize("keywords,message", [
    ({"verify": "no"}, r"^verify='no': must be True or False"),
    ({"precision": 0}, r"^precision=0: give a precision name such as 'fp32'"),
    ({"precision": ""}, r"^precision='': give a precision name"),
])
def test_load_refuses_a_wrong_kind_of_verify_or_precision(tiny_model, keywords, message):
    """sdopt.load(path, verify="no") verified the files (a string is true) and precision=0 ran the artifact's own: neither
    keyword was type-checked, unlike the load options."""
    import sdopt

    with pytest.raises(sdopt.SdoptError, match=message):
        sdopt.load(tiny_model, **keywords)


def test_every_flag_says_what_it_does_and_init_model_takes_quiet(monkeypatch, tmp_path):
    """`-q` of train-shapes, distill-decoder, bench and optimize, bench's --steps/--height/--width, optimize's --device,
    --steps, --guidance... showed in --help with no text at all; init-model printed a progress bar and had no -q."""
    from sdopt.cli import build_parser
    import sdopt.zoo

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    bare = [f"{name} {'/'.join(a.option_strings)}" for name, p in sub.choices.items() for a in p._actions
            if a.option_strings and a.dest != "help" and not a.help]
    assert not bare, bare
    seen = {}
    monkeypatch.setattr(sdopt.zoo, "write_model", lambda name, out, **kw: seen.update(kw) or out)
    assert main(["init-model", "tiny", str(tmp_path / "m"), "-q"]) == 0
    assert seen["progress"] is False


def test_flags_are_not_abbreviated_and_a_misspelt_one_is_said_with_the_nearest(tiny_model, capsys):
    """argparse took --ste for --steps: it would stop working, or change meaning, the day a flag shares the prefix. And
    a misspelt flag was said under the top-level usage (sdopt [-h] [--version] COMMAND) with no hint."""
    for typed in (["--ste", "3"], ["--stesp=3"]):
        with pytest.raises(SystemExit) as exc:
            main(_gen(tiny_model, *typed))
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"sdopt generate: error: unrecognized arguments: {' '.join(typed)} (did you mean --steps?)" in err
        assert "usage: sdopt generate" in err


def test_a_prompt_the_locale_cannot_decode_is_read_as_utf8():
    """Under LC_ALL=C (PYTHONUTF8=0) generate -p café reached the tokenizer as undecoded bytes (surrogates), which it
    refused with a TypeError traceback before any step: prompts are read in UTF-8 (sdopt.os_text.readable)."""
    from sdopt.cli import build_parser

    args = build_parser().parse_args(["generate", "m", "-p", "caf\udcc3\udca9", "-n", "na\udcc3\udcafve", "-o", "o.png"])
    assert (args.prompt, args.negative_prompt) == (["café"], ["naïve"])  # -n as -p: once per prompt (qa63)


def test_a_path_the_locale_cannot_decode_is_printed_in_its_own_bytes(tiny_model, tmp_path):
    """Under LC_ALL=C (PYTHONUTF8=0) a path given as café/ was printed on stdout as caf\\udcc3\\udca9/ (generate's
    image, inspect's artifact): a script reading it could not open it. The bytes as given, as Python's stdout prints them;
    sdopt's own × still as \\xd7."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(tiny_model, tmp_path / "café")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    done = subprocess.run([sys.executable, "-m", "sdopt.cli", "inspect", "--no-verify", "café"], cwd=tmp_path, env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("artifact   café\n".encode()), done.stdout[:80] + done.stderr
    missing = subprocess.run([sys.executable, "-m", "sdopt.cli", "inspect", "--no-verify", "café/none"], cwd=tmp_path, env=env,
                             capture_output=True, timeout=120)
    assert missing.returncode == 2 and "café/none".encode() in missing.stderr and b"udc" not in missing.stderr, missing.stderr
    from sdopt.cli import _PATH_BYTES_ELSE_BACKSLASH

    assert "a×b caf\udcc3\udca9".encode("ascii", _PATH_BYTES_ELSE_BACKSLASH) == b"a\\xd7b caf\xc3\xa9"


def test_a_checkpoints_config_with_non_ascii_text_reads_under_an_ascii_locale(tmp_path):
    """A UNet config.json holding non-ASCII text (a _name_or_path under /home/josé/) was read in the locale's encoding:
    under LC_ALL=C (PYTHONUTF8=0) the checkpoint's precision read died in a UnicodeDecodeError traceback, and the UNet
    config the loop conditions on read as none (walk qa92). JSON is UTF-8 whatever the locale."""
    import os
    import subprocess
    import sys

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_name_or_path": "/home/josé/sd", "torch_dtype": "float16",
                                                               "addition_embed_type": "text_time"}, ensure_ascii=False), encoding="utf-8")
    code = ("import sys; from types import SimpleNamespace as N; from pathlib import Path; from sdopt.layouts import _torch_dtype_name; "
            "from sdopt.runtime.conditioning import unet_config; folder = Path(sys.argv[1]); "
            "print(_torch_dtype_name(folder), unet_config(N(components={'unet': N(folder='unet')}), folder).get('addition_embed_type'))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["fp16", "text_time"], done.stderr[-2000:]


@pytest.mark.parametrize("encoding", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}])
def test_help_prints_under_an_ascii_locale(encoding):
    """`sdopt export --help` and `generate --help` died with a UnicodeEncodeError traceback (exit 1) on stdout that is not
    UTF-8 (a Docker image's LC_ALL=C, an ascii pipe): their help has a — that argparse printed before the CLI set stdout
    to escape what it cannot encode."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "", **encoding}
    for command in ("export", "generate"):
        done = subprocess.run([sys.executable, "-m", "sdopt.cli", command, "--help"], env=env, capture_output=True, timeout=120)
        assert done.returncode == 0 and b"\\u2014" in done.stdout and not done.stderr, done.stderr[-300:]


def test_a_utf8_file_that_begins_with_a_bom_reads_as_its_text(tmp_path):
    """Windows' Notepad and PowerShell's `-Encoding utf8` write a BOM first: a prompt file's first line, a '# comment',
    was benched as the prompt '\\ufeff# my prompts', and a rules TOML was 'not valid TOML (Invalid statement (at line 1,
    column 1))' though it looked right in any editor."""
    from sdopt.file_reading import read_json, read_toml
    from sdopt.prompts import read_prompts

    bom = "\ufeff".encode()
    (tmp_path / "prompts.txt").write_bytes(bom + "# my prompts\r\na red circle\r\n".encode())
    (tmp_path / "rules.toml").write_bytes(bom + b'[gate]\n"latency.median" = "10%"\n')
    (tmp_path / "config.json").write_bytes(bom + b'{"a": 1}')
    assert read_prompts(tmp_path / "prompts.txt") == ["a red circle"]
    assert read_toml(tmp_path / "rules.toml") == {"gate": {"latency.median": "10%"}}
    assert read_json(tmp_path / "config.json") == {"a": 1}


def test_a_utf16_prompt_file_is_refused_saying_to_save_it_as_utf8(tmp_path):
    """Windows PowerShell's `> prompts.txt` writes UTF-16: it was refused as 'not UTF-8 text: give a text file with one
    prompt per line', advice its writer, holding what any editor shows as a text file, could not follow."""
    from sdopt.errors import SdoptError
    from sdopt.prompts import read_prompts

    (tmp_path / "prompts.txt").write_text("a red circle\n", encoding="utf-16")
    with pytest.raises(SdoptError, match=r"prompts.txt is UTF-16 text .*: save it as UTF-8"):
        read_prompts(tmp_path / "prompts.txt")


def test_a_pipe_given_as_a_prompt_file_is_read(tmp_path):
    """--prompts <(grep cat prompts.txt) (a pipe, /dev/fd/N) and --calibration-prompts /dev/null were "does not exist":
    they exist, they are not regular files. A pipe is read as a file; /dev/null has no prompts."""
    import os
    import threading

    from sdopt import SdoptError
    from sdopt.prompts import read_prompts

    fifo = tmp_path / "prompts"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("a cat\n# a comment\na dog\n", encoding="utf-8"))
    writer.start()
    assert read_prompts(fifo) == ["a cat", "a dog"]
    writer.join()
    with pytest.raises(SdoptError, match="prompt file /dev/null has no prompts"):
        read_prompts("/dev/null")


def test_progress_bars_off_a_terminal_redraw_seldom_unless_the_user_says():
    """Off a terminal (a CI log) tqdm redrew every 0.1 s, each redraw one more copy of the bar on a single line (qa74:
    16 for init-model; a 6,700-step training's many more). sdopt sets TQDM_MININTERVAL before tqdm is imported, unless
    the user set it; on a terminal it leaves tqdm's default."""
    import os

    code = "import sdopt.cli, os, sys; sdopt.cli._slow_bars_off_a_terminal(); import tqdm; print(os.environ.get('TQDM_MININTERVAL'))"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_MININTERVAL"}
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert piped.stdout.strip() == "30", piped.stderr
    told = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**env, "TQDM_MININTERVAL": "2"})
    assert told.stdout.strip() == "2", told.stderr


def test_docstrings_stripped_is_one_line_that_says_which_setting(tiny_model, tmp_path):
    """Under python -OO (PYTHONOPTIMIZE=2, set on some images to save memory) transformers cannot import its models: it
    reads their docstrings. init-model, export, quantize and generate with a PyTorch model ended in a 40-line traceback
    ("No `Args` or `Parameters` section is found in the docstring of ..."); now one line naming the setting, exit 2."""
    import os

    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "sdopt.cli", "generate", str(tiny_model), "-p", "x", "--steps", "1", "--height", "64",
                           "--width", "64", "-q", "-o", str(out / "x.png")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONOPTIMIZE": "2"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == ("sdopt: error: transformers cannot import its models with docstrings stripped (python -OO "
                                            "or PYTHONOPTIMIZE=2): run sdopt without them (-O, PYTHONOPTIMIZE=1, keeps docstrings)")
    assert not out.exists()


@pytest.mark.parametrize("command", [["init-model", "tiny", "OUT"], ["init-lora", "MODEL", "OUT"], ["init-embedding", "MODEL", "OUT"],
                                     ["train-shapes", "OUT"], ["distill-decoder", "MODEL", "-o", "OUT"]])
def test_a_command_that_writes_torch_weights_without_torch_names_what_to_install(tmp_path, command):
    """An install without sdopt's dependencies (pip install --no-deps, as tried on Python 3.13): generate said which
    package to install, but these five ended in a ModuleNotFoundError traceback from deep in the command."""
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else str(tmp_path / "model") if a == "MODEL" else a for a in command]
    code = "import sys\nsys.modules['torch'] = None\nfrom sdopt.cli import main\nsys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "the Python package 'torch', which is not installed: pip install 'sdopt[all]'" in run.stderr
    assert not out.exists()
