"""What several commands parse the same way: integer lists, LoRA flags, output paths, input images."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import warnings
from pathlib import Path

from sdopt.errors import SdoptError
from sdopt.runtime.backends import RUN_PRECISIONS


@contextlib.contextmanager
def warnings_above(bar):
    """While the tqdm ``bar`` is open, a warning is printed on a line of its own above it (tqdm.write), not after the bar's
    half-drawn line ("denoising:   0%|          | 0/20 [00:00<?, ?step/s]sdopt: warning: prompt ... is 102 tokens")."""
    shown = warnings.showwarning

    def above(message, category, filename, lineno, file=None, line=None):
        bar.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"), file=file or sys.stderr)

    warnings.showwarning = above
    try:
        yield
    finally:
        warnings.showwarning = shown


def user_path(text: str) -> str:
    """A path as given, a leading ~ read as the home folder: the argparse ``type=`` of every flag that names a file or
    folder, input or output. A quoted ~ reaches sdopt as it is: model folders and artifact outputs read it as home,
    while generate -o, init-lora, bench -o and --work made a folder named ~ in the working directory, and --init-image,
    --mask, --parameters-from, --prompts, gate's reports, clean, --vae-decoder and profile files were not found."""
    return os.path.expanduser(text)


def user_text(text: str) -> str:
    """A prompt as given: under LC_ALL=C (PYTHONUTF8=0) a non-ASCII argument is undecoded bytes (surrogates), which the
    tokenizer refused with a TypeError traceback; read in UTF-8 (sdopt.os_text.readable), the text that was typed."""
    from sdopt.os_text import readable

    return readable(text)


def path_list(text: str) -> list[str]:
    """PATH,PATH,...: each a user_path (a ~ after the first comma too)."""
    return [user_path(x) for x in comma_list(text)]


def int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SdoptError(f"{flag} {text!r}: give integers separated by commas, like 0,1,2") from None


def comma_list(text: str) -> list[str]:
    """NAME,NAME,...: the names, stripped, empty ones dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def is_stdout(path: str | Path) -> bool:
    """``-``, or the file or pipe this process's stdout already is (``--json /dev/stdout > log``): opened as a file of its
    own, a log was truncated and written from its start, and what was printed after overwrote it. Not a terminal or
    /dev/null (``-o /dev/null > /dev/null``): written as any device."""
    if str(path) == "-":
        return True
    try:
        named, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no such file yet; a stdout with no file (captured; closed: None)
        return False
    return (named.st_dev, named.st_ino) == (out.st_dev, out.st_ino) and not stat.S_ISCHR(named.st_mode)


def write_text_file(path: str | Path, text: str) -> None:
    """A text output the user named (a gate's markdown or JSON): its folder made where missing, a failure said plainly."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        from sdopt.write_failures import DISK_FULL, out_of_space

        advice = DISK_FULL if out_of_space(exc) else "give a file path in a writable folder"
        raise SdoptError(f"{path}: cannot write it ({exc.strerror or exc}); {advice}") from None


def output_paths(out: Path, count: int) -> list[Path]:
    """OUT.png for one image; OUT-0.png, OUT-1.png, ... for several; a name without a suffix gets .png. A suffix no
    image format has is refused before any work (PIL would refuse it only when saving, after the generation)."""
    from PIL import Image

    if is_stdout(out):  # "-" had written ./-.png, /dev/stdout /dev/stdout.png (a new file in /dev, for root)
        raise SdoptError(f"-o {out}: generate writes image files and prints their paths on stdout; give a file name such as out.png")
    suffix = out.suffix or ".png"
    if Image.registered_extensions().get(suffix.lower()) not in Image.SAVE:  # formats PIL writes, not only reads
        raise SdoptError(f"-o {out}: {suffix} is not an image format sdopt can write; end the name in .png (keeps the parameters), .jpg or .webp")
    if out.is_char_device():  # -o /dev/null: the images are written there (and discarded), as to any file
        return [out] * count
    if count == 1:  # an existing folder is kept as given, for check_output_files to refuse
        return [out.with_name(out.name + suffix) if not out.suffix and not out.is_dir() else out]
    return [out.with_name(f"{out.stem}-{i}{suffix}") for i in range(count)]


def backend_of(artifact: str) -> str:
    """The backend an artifact names (a PyTorch checkpoint splits its UNet at load for step-feature caching)."""
    from sdopt.manifest import read_manifest
    from sdopt.source import resolve

    return read_manifest(resolve(artifact)).backend


def exporter_names() -> list[str]:
    from sdopt.export import EXPORTERS  # plain data: imports no backend

    return list(EXPORTERS)


def add_lora_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--lora", action="append", default=[], type=user_path, metavar="FILE[:SCALE]",
                   help=f"a LoRA (.safetensors, Diffusers or kohya format) {what}, at SCALE (default 1.0); repeatable")


def add_embedding_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--embedding", action="append", default=[], type=user_path, metavar="PATH",
                   help=f"a textual inversion embedding (.safetensors; its file name is the word a prompt uses), or a folder of them, {what}; repeatable")


def add_eta_flag(p: argparse.ArgumentParser) -> None:
    """--eta, as generate, bench and optimize take it (GenerateRequest.eta)."""
    p.add_argument("--eta", type=float, default=None, metavar="E",
                   help="ddim and tcd: the fresh noise each step adds, 0 to 1 (default 0: deterministic DDIM; TCD's authors suggest 0.3)")


def add_load_flags(p: argparse.ArgumentParser) -> None:
    """--precision and --device, as generate and serve take them (sdopt.load's precision and device)."""
    p.add_argument("--precision", choices=RUN_PRECISIONS, default=None, help="default: the artifact's")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """--threads, as generate and serve take it (the threads load option of every CPU backend)."""
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads each model computes with (torch, ONNX Runtime, OpenVINO; default: one per core). On a machine "
                        "other work keeps busy, the cores left free (docs/optimize.md, \"Threads\")")


def add_request_default_flags(p: argparse.ArgumentParser) -> None:
    """--default-steps and --default-guidance, as export and quantize record them (sdopt.runtime.request_defaults)."""
    p.add_argument("--default-steps", type=int, default=None, metavar="N",
                   help="the steps a request that does not say runs with this artifact, in sdopt generate and serve (a few-step "
                        "model's: 1 for SD-Turbo; default: 4 for an LCM UNet, else 20)")
    p.add_argument("--default-guidance", type=float, default=None, metavar="G",
                   help="likewise the guidance scale (0 for a Turbo model, which runs unguided; default: 8.5 for an LCM UNet, else 7.5)")


def lora_scales(items: list[str]) -> dict[str, float] | None:
    """--lora FILE[:SCALE] flags as a request's {file: scale}. A file named twice counts at the sum of its scales, as
    export --lora fuses it twice and a prompt's two <lora:NAME:W> tags add up (serve, AUTOMATIC1111)."""
    from sdopt.lora import parse_loras, summed_scales

    return summed_scales((str(lora.path), lora.scale) for lora in parse_loras(items)) or None
