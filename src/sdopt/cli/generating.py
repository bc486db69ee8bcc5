"""sdopt generate: images from any artifact, text-to-image, img2img and inpainting."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from sdopt.cli.common import output_paths, backend_of, user_path, user_text, add_embedding_flag, add_eta_flag, add_load_flags, add_lora_flag, add_threads_flag, lora_scales, warnings_above
from sdopt.infotext import lora_difference, loras_in_effect, missing_embeddings, read_png_parameters, save_options, unapplied
from sdopt.input_images import open_image
from sdopt.request import MASKED_CONTENT, check_strength_has_image
from sdopt.errors import BrokenOutputError, SdoptError


def _generate(args: argparse.Namespace) -> int:
    import dataclasses

    from sdopt.request import GenerateRequest
    from sdopt.runtime.request_defaults import SDOPT_GUIDANCE, SDOPT_STEPS

    init_image, mask = open_image(args.init_image, "--init-image"), open_image(args.mask, "--mask")
    flags = {
        "prompt": (args.prompt if len(args.prompt) > 1 else args.prompt[0]) if args.prompt else None,
        "negative_prompt": (args.negative_prompt if len(args.negative_prompt) > 1 else args.negative_prompt[0]) if args.negative_prompt else None,
        "seed": args.seed, "steps": args.steps, "guidance_scale": args.guidance,
        "height": args.height, "width": args.width, "num_images": args.num_images, "scheduler": args.scheduler, "eta": args.eta,
        "strength": args.strength, "cache_interval": args.cache_interval, "guidance_end": args.guidance_end,
        "masked_content": args.masked_content,
        "prompt_emphasis": args.prompt_emphasis, "clip_skip": args.clip_skip,
    }
    # An image's own parameters (the PNGs sdopt and AUTOMATIC1111 write carry them), then every flag given over them.
    made_from = {}
    if args.parameters_from:
        given = {name for name, value in flags.items() if value is not None}  # a flag wins: its value in the image is not read
        try:
            parsed, made_from = read_png_parameters(args.parameters_from, given)
        except SdoptError as exc:
            if exc.field is None:
                raise
            raise SdoptError(f"{exc}; give {_flag_for(exc.field)} to make it with another", field=exc.field) from None
        # LoRAs are checked once the artifact is loaded: it may have them fused into its weights
        if untaken := [key for key in unapplied(parsed) if key != "Loras"]:  # a warning: printed under -q too
            print(f"warning: {args.parameters_from} says {', '.join(untaken)}, which this request does not take: "
                  "the image will differ", file=sys.stderr)
    check_strength_has_image(args.strength, init_image)
    if init_image is None:
        # AUTOMATIC1111's hires fix writes its second pass's Denoising strength on a text-to-image picture: not an init
        # image's (the Hires keys are named as not taken above)
        if "strength" in made_from and not any(key.startswith("Hires ") for key in parsed):
            print(f"warning: {args.parameters_from} was made from an init image (img2img or inpainting: its Denoising strength); "
                  "without --init-image (and --mask) this makes a text-to-image picture, not that one", file=sys.stderr)
        made_from.pop("strength", None)
    if mask is None and made_from.pop("masked_content", None) and init_image is not None:
        # An inpainted image's Masked content means nothing without a mask: it was refused as if typed ("give mask_image
        # with it"). Without an init image the warning above says what is made instead.
        print(f"warning: {args.parameters_from} was inpainted (its Masked content); without --mask this makes an img2img "
              "picture, not that one", file=sys.stderr)
    asked = {**made_from, **{k: v for k, v in flags.items() if v is not None}}
    if "prompt" not in asked:
        raise SdoptError("give the prompt, --prompt TEXT (or --parameters-from IMAGE.png to take an image's)")
    asked = _lora_tags_taken_out(asked)
    with _said_of_the_image(args.parameters_from, made_from, flags):
        request = GenerateRequest(
            # Without a size (None) the pipeline gives an init image's own (down to a multiple of 8), as Diffusers' img2img,
            # else the artifact's: its static shapes, or the size the model was trained at (Pipeline.sized).
            **{k: v for k, v in asked.items() if k not in ("steps", "guidance_scale")},
            # Unset: the model's own (sdopt.runtime.request_defaults), known once it is loaded; checked with sdopt's until then.
            steps=asked.get("steps", SDOPT_STEPS),
            guidance_scale=asked.get("guidance_scale", SDOPT_GUIDANCE),
            init_image=init_image,
            mask_image=mask,
            loras=lora_scales(args.lora),
        ).validate()  # before the (slow) load, so a bad request fails at once
    from sdopt.runtime.schedulers import check_scheduler

    check_scheduler(request.scheduler)  # the precision is checked by the artifact's backend at load (before any weights)
    from sdopt.outputs import check_output_files, local_inputs

    manifest = _artifact_manifest(args.artifact)  # read before the (slow) load: what it was built for
    if manifest is not None and "num_images" not in asked:
        request = _built_batch(manifest, request, args.quiet)
    out = Path(args.output)
    paths = output_paths(out, request.batch_size)
    check_output_files(paths, local_inputs(args.artifact))  # before the (slow) load and generation
    if manifest is not None and not args.reshape:
        # a size or batch it cannot run, refused before the load (which compiles every model first: 15 s for sd15's
        # OpenVINO artifact, docs/openvino.md)
        from sdopt.runtime.request_checks import check_shapes
        from sdopt.runtime.request_defaults import sized

        check_shapes(manifest, sized(request, manifest))
    if request.loras:
        from sdopt.errors import require_installed

        require_installed("peft", "lora")  # before the load: it was said once the denoising bar had appeared
    if args.embedding:
        from sdopt.embeddings import parse_embeddings

        import warnings

        with warnings.catch_warnings():  # an empty folder's warning is add_embeddings' to say, after the load (it was said twice)
            warnings.simplefilter("ignore")
            parse_embeddings(args.embedding, skipped={})  # each file named readable, before the load (a folder's are said after it)

    from tqdm import tqdm

    import sdopt

    if not args.quiet:  # as sdopt serve says it: the load draws no bar, and sd15's ONNX sessions took 35 s before the first
        print(f"loading {args.artifact} ...", file=sys.stderr)
    pipe = sdopt.load(
        args.artifact,
        device=args.device,
        precision=args.precision,
        attention_slicing=args.attention_slicing,
        vae_tiling=args.vae_tiling,
        cpu_offload=args.cpu_offload,
        compile=args.compile,
        channels_last=args.channels_last,
        threads=args.threads,
        **({"reshape": True} if args.reshape else {}),
        # the request's: a flag's or an image's (--parameters-from), which loaded without it and was refused
        # (an artifact's manifest is read above already; a checkpoint or hub id is resolved by backend_of)
        **({"deep_cache": True} if (request.cache_interval or 1) > 1
           and (manifest.backend if manifest is not None else backend_of(args.artifact)) == "torch" else {}),
    )
    if args.embedding:
        for word, why in pipe.add_embeddings(args.embedding).items():  # found in a folder given; a file named is refused instead
            print(f"embedding {word} left out: {why}", file=sys.stderr)
    if args.parameters_from and (missing := missing_embeddings(parsed, pipe.embeddings)):
        print(f"warning: {_embeddings_missing(args.parameters_from, missing, pipe.manifest.backend)}", file=sys.stderr)
    if args.parameters_from and (differ := lora_difference(parsed, loras_in_effect(request.loras, pipe.fused_loras))):
        print(f"warning: {_loras_differ(args.parameters_from, *differ, pipe.manifest.backend, pipe.fused_loras)}", file=sys.stderr)
    defaults = pipe.request_defaults
    taken = {k: getattr(defaults, k) for k in ("steps", "guidance_scale") if k not in asked}
    if taken and not defaults.is_sdopts:
        request = dataclasses.replace(request, **taken)
        if not args.quiet:
            said = [f"{request.steps} step{'s' * (request.steps != 1)}" if "steps" in taken else "", f"guidance {request.guidance_scale:g}" if "guidance_scale" in taken else ""]
            print(f"{' at '.join(x for x in said if x)}: {defaults.source} (--steps/--guidance to change)", file=sys.stderr)
    # A request the artifact refuses (static shapes, Clip skip past its layers, ...) is said before any progress bar:
    # generate's own check came after an empty "denoising 0/N" bar.
    pipe.check_request(request)
    # The UNet calls, not the steps: PNDM (SD 1.5's own scheduler) makes one more, Heun about twice (the bar's total
    # moved from 20 to 21 at the first call).
    with tqdm(total=pipe.unet_calls(request), desc="denoising", unit="step", file=sys.stderr, disable=args.quiet) as bar, warnings_above(bar):

        def progress(done: int, total: int) -> None:
            bar.total = total
            if done == total:  # the VAE decode comes next, with no step to count: sd15's took 9 s at 256², a full bar standing still
                bar.set_postfix_str("decoding", refresh=False)  # drawn by the update below, with the step count it names
            bar.update(done - bar.n)

        result = pipe.generate(request, progress=progress)
        bar.set_postfix_str("", refresh=False)  # decoded: the bar's last line is not left saying so
    if result.problems:
        raise BrokenOutputError(
            f"the generation produced no usable image ({'; '.join(result.problems)}); nothing was saved. "
            "The artifact or the request makes the numbers overflow: try a guidance scale near 7.5, fp32, or export again"
        )
    from PIL import Image

    from sdopt.outputs import files_written_whole
    from sdopt.write_failures import DISK_FULL, file_too_large, out_of_space, past_file_size_limit

    paths[0].parent.mkdir(parents=True, exist_ok=True)
    # An interrupted or failed save never leaves half an image, nor truncates the one it replaces, nor a set mixing new
    # images with a run's before.
    with files_written_whole(paths) as partials:
        for image, path, partial in zip(result.images, paths, partials):
            try:
                # its parameters, as AUTOMATIC1111 writes them (a PNG's text chunk, a JPEG's or WebP's EXIF); PNG
                # where the name says no format (-o /dev/null)
                image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
                image.save(partial, format=image_format, **save_options(image, image_format))
            except OSError as exc:  # the disk filled up, or the path changed meanwhile
                advice = f"; {DISK_FULL}" if out_of_space(exc) else ""  # "No space left on device" alone said not what to do
                if past_file_size_limit(exc):  # "File too large" alone did not say whose limit
                    what, todo = file_too_large()
                    advice = f": {what}; {todo}"
                raise SdoptError(f"cannot write {path}: {exc.strerror or exc} (nothing was left half written){advice}") from exc
    for path in paths:
        print(path)
    if args.parameters_from and not args.quiet and (asked_for := _batch_position(parsed, len(paths))) is not None:
        # Its batch is made again whole (drawn from one seed): which of the files is the image that was given
        print(f"{args.parameters_from} was image {asked_for} of its batch: {paths[asked_for]}", file=sys.stderr)
    print(result.summary(), file=sys.stderr)
    return 0


def _lora_tags_taken_out(asked: dict) -> dict:
    """The prompts without AUTOMATIC1111's <lora:NAME:WEIGHT> tags (typed, or an AUTOMATIC1111 image's), with a warning:
    they went to the text encoder as words. A tag is never text there nor in sdopt serve (which applies it from its
    --lora-dir); here a LoRA is given as --lora FILE[:SCALE]."""
    from sdopt.lora import take_network_tags

    def without(text: str) -> str:  # as sdopt serve takes them out (serve/loras.py)
        text, loras, other = take_network_tags(text)
        tags.extend(tag.group(0) for tag in loras)
        others.extend(other)
        return text

    out, tags, others = dict(asked), [], []
    for key in ("prompt", "negative_prompt"):
        if isinstance(asked.get(key), str):
            out[key] = without(asked[key])
        elif asked.get(key):
            out[key] = [without(text) for text in asked[key]]
    if tags:  # a warning: printed under -q too
        print(f"warning: {', '.join(dict.fromkeys(tags))} taken out of the prompt: sdopt generate applies a LoRA given as "
              "--lora FILE[:SCALE] (sdopt serve --lora-dir reads such tags)", file=sys.stderr)
    if others:  # AUTOMATIC1111 applies its hypernetworks' and extensions' tags; sdopt applies LoRAs only
        print(f"warning: {', '.join(dict.fromkeys(others))} taken out of the prompt and not applied: sdopt applies LoRAs only", file=sys.stderr)
    return out


def _batch_position(parsed: dict, images: int) -> int | None:
    """Where an sdopt batch image (infotext.one_seed_batch) is among the images made again; None for any other."""
    from sdopt.infotext import one_seed_batch

    try:
        position = int(str(parsed.get("Batch pos", "")).strip())
    except ValueError:
        return None
    return position if one_seed_batch(parsed) and 0 <= position < images else None


# The flags that give another value for a request field, where not --FIELD (an image's Size gives both sides)
_FLAG_NAMES = {"guidance_scale": "--guidance", "height": "--height and --width", "width": "--height and --width", "prompt": "--prompt"}


@contextlib.contextmanager
def _said_of_the_image(image: str | None, made_from: dict, flags: dict):
    """A value the request refuses that came from an image's parameters (--parameters-from), not a flag: said so, with
    the flag that gives another (an AUTOMATIC1111 PNG's "Size: 60x60" was refused as if typed)."""
    try:
        yield
    except SdoptError as exc:
        name = exc.field
        if image and name in made_from and flags.get(name) is None:  # said as the image's value, not as the flag it did not type
            told = str(exc).split(": ", 1)[-1]
            raise SdoptError(f"{image}'s parameters give {name}={made_from[name]!r}: {told}; give {_flag_for(name)} to make it with another",
                             field=name) from None
        raise


def _flag_for(field: str) -> str:
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _embeddings_missing(image: str, missing: list[str], backend: str) -> str:
    """The warning for an image whose prompts used embeddings this run lacks, with the way to have them: --embedding on
    PyTorch; an export with them fused elsewhere (those backends refuse --embedding)."""
    fix = ("give them with --embedding" if backend == "torch" else
           f"this {backend} artifact reads only the embeddings fused at export (sdopt export MODEL --embedding FILE), "
           "or generate with the PyTorch checkpoint and --embedding")
    return (f"{image}'s prompts used the embeddings {', '.join(missing)} (its TI hashes), which this run does not have "
            f"(or has another file of): the image will differ; {fix}")


def _loras_differ(image: str, asked: dict[str, str], have: dict[str, float], backend: str, fused: dict[str, float]) -> str:
    """The warning for an image made with other LoRAs than this run has (infotext.lora_difference), with the way to
    have the image's: --lora on PyTorch (added to what the artifact has fused), an export with them fused elsewhere."""
    def listed(pairs) -> str:
        return ", ".join(f"{name}:{scale}" if isinstance(scale, str) else f"{name}:{scale:g}" for name, scale in pairs.items()) or "none"

    said = f"{image} was made with the LoRAs {listed(asked)}, and this run has {listed(have)}"
    if fused:
        said += f" ({listed({Path(f).stem: w for f, w in fused.items()})} fused into the artifact)"
    if not asked:  # the image had none: this run's are the difference
        fix = "leave out --lora" if not fused else "make it with the checkpoint, or an artifact without them fused"
    elif backend == "torch":
        fix = ("give them with --lora FILE:SCALE" if not fused else
               "give --lora FILE:SCALE for what the image has beyond the fused ones (a scale adds to a fused one's), or use the checkpoint without them")
    else:
        fix = (f"this {backend} artifact takes LoRAs only fused at export (sdopt export MODEL --lora FILE:SCALE), "
               "or generate with the PyTorch checkpoint and --lora")
    return f"{said}: the image will differ; {fix}"


def _artifact_manifest(artifact: str):
    """An artifact folder's manifest, or None: anything else (a hub id, a Diffusers folder) is the load's to resolve."""
    folder = Path(artifact)
    if not (folder / "sdopt.json").is_file():
        return None
    from sdopt.manifest import read_manifest

    return read_manifest(folder)


def _built_batch(manifest, request, quiet: bool):
    """Without --num-images, a static artifact built for a batch of B images makes B (B / prompts each), as its built
    height and width are the default: one image was asked of it and refused."""
    import dataclasses

    batch, prompts = (manifest.static_shapes or {}).get("batch"), len(request.prompts)
    if not batch or batch == request.batch_size or batch % prompts:
        return request
    if not quiet:
        print(f"{batch // prompts} image{'s' * (batch // prompts != 1)} a prompt: the batch this artifact was built for "
              "(--num-images to say)", file=sys.stderr)
    return dataclasses.replace(request, num_images=batch // prompts)


def add_generate(sub) -> None:
    from sdopt.runtime.schedulers import SCHEDULERS

    p = sub.add_parser("generate", help="generate images with any artifact")
    p.add_argument("artifact", type=user_path, help="artifact folder, Diffusers model folder, or hub id")
    p.add_argument("--prompt", "-p", action="append", type=user_text, help="the prompt (repeat for several)")
    p.add_argument("--negative-prompt", "-n", action="append", type=user_text,
                   help="what the images should not show (with guidance; default: none); repeat for one per --prompt")
    p.add_argument("--prompt-emphasis", action=argparse.BooleanOptionalAction, default=None,
                   help="read AUTOMATIC1111's emphasis in the prompts: (word) x1.1, (word:1.5), [word] /1.1, \\( for a literal bracket "
                        "(default: prompts are plain text, as in Diffusers; an AUTOMATIC1111 image's --parameters-from turns it on)")
    p.add_argument("--clip-skip", type=int, default=None, metavar="N",
                   help="AUTOMATIC1111's Clip skip: read the prompt from the text encoder's last layer but N-1 (default 1, the last; "
                        "2, the penultimate, is what many SD 1.5 fine-tunes expect; Diffusers' clip_skip is N-1). SD 1.x/2.x")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--parameters-from", type=user_path, default=None, metavar="IMAGE",
                   help="make an image again: take the prompt, negative prompt, steps, sampler, guidance, seed, size (and strength, "
                        "eta, sdopt's levers) from the generation parameters IMAGE carries (sdopt's and AUTOMATIC1111's PNGs do); "
                        "every flag given wins over them (LoRAs are not taken: give --lora). With another artifact: the same request on another backend")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's, `sdopt inspect` shows them: 4 for an LCM UNet, what export --default-steps recorded, else 20)")
    p.add_argument("--guidance", "--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale, <=1 turns it off (default: the model's: 8.5 for an LCM UNet, what export --default-guidance recorded, else 7.5)")
    p.add_argument("--height", type=int, default=None, help="default: the init image's (down to a multiple of 8), else the model's own "
                   "(a static artifact's shapes, or the size it was trained at: 512 for SD 1.5, 1024 for SDXL, 64 for the toys)")
    p.add_argument("--width", type=int, default=None, help="default: as --height")
    p.add_argument("--num-images", type=int, default=None, help="images per prompt (default 1), drawn together from --seed (not seed, seed+1, ...): "
                   "an image is made again with its batch, as --parameters-from does")
    p.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} (default: the checkpoint's own)")
    add_eta_flag(p)
    p.add_argument("--init-image", type=user_path, default=None, metavar="PATH", help="img2img: start from this image (resized to --height/--width)")
    p.add_argument("--strength", type=float, default=None, help="img2img/inpaint: how much of the schedule repaints the image, (0, 1] (default 0.8)")
    p.add_argument("--mask", type=user_path, default=None, metavar="PATH", help="inpaint: white = repaint, black = keep; the init image's size (needs --init-image)")
    p.add_argument("--masked-content", choices=MASKED_CONTENT, default=None,
                   help="inpaint: what the loop starts from under the mask below strength 1 — the init image (default, as Diffusers), "
                        "noise or zeros (AUTOMATIC1111's \"latent noise\", \"latent nothing\")")
    p.add_argument("--cache-interval", type=int, default=None, metavar="N",
                   help="step-feature caching: the whole UNet every N-th step, its shallow branch between (default: the artifact's, set by export --deep-cache; 1 = off)")
    p.add_argument("--guidance-end", type=float, default=None, metavar="F",
                   help="truncated guidance: the fraction (0, 1] of the steps that run classifier-free guidance, the rest the conditional pass alone "
                        "(default: the artifact's, 1 = every step unless sdopt optimize chose less)")
    add_load_flags(p)
    p.add_argument("--attention-slicing", action="store_true", help="torch: Diffusers' sliced attention instead of PyTorch's scaled-dot-product attention: more memory and slower, not less (it warns)")
    p.add_argument("--vae-tiling", action="store_true", help="torch: decode large images in tiles (less memory)")
    p.add_argument("--cpu-offload", action="store_true", help="torch on CUDA: keep idle components in CPU memory")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch: torch.compile the UNet and VAE decode (MODE: default, max-autotune, max-autotune-no-cudagraphs, "
                        "reduce-overhead = with CUDA graphs; or a backend: cudagraphs, eager). Compiles in the first image")
    p.add_argument("--channels-last", action="store_true", help="torch: NHWC memory layout for the UNet and VAE decoder")
    add_threads_flag(p)
    p.add_argument("--reshape", action="store_true", help="openvino: let a static-shape artifact run another size (compiled on first use)")
    add_lora_flag(p, "applied for this run (torch backend; other backends take LoRAs fused at export)")
    add_embedding_flag(p, "loaded for this run (torch backend; other backends read the embeddings fused at export)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notes (warnings still print)")
    p.add_argument("-o", "--output", required=True, type=user_path, help="output image: PNG, or JPEG or WebP by its suffix, each with its generation parameters (several images: OUT-0.png, OUT-1.png, ...)")
    p.set_defaults(func=_generate)


