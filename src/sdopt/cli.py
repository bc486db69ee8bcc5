"""The sdopt command line. Argument parsing only: every command is a thin call into a package.

Errors caused by input are SdoptError: printed on one line, exit status 2
(3 when a generation ran but gave no usable image; the gate's own codes: 0/1/2).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from sdopt import __version__
from sdopt.errors import BrokenOutputError, SdoptError


def _init_model(args: argparse.Namespace) -> int:
    from sdopt.zoo import write_model

    out = write_model(args.name, args.out, seed=args.seed, force=args.force)
    print(out)
    return 0


def _init_lora(args: argparse.Namespace) -> int:
    from sdopt.zoo.lora import write_lora

    print(write_lora(args.model, args.out, seed=args.seed, force=args.force))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from sdopt.inspect_artifact import describe, format_description

    data = describe(args.artifact, verify=not args.no_verify)
    print(json.dumps(data, indent=2) if args.json else format_description(data))
    return 0


def _clean(args: argparse.Namespace) -> int:
    from sdopt.fsutil import remove_stale_temp_folders

    folder = Path(args.folder)
    if not folder.is_dir():
        raise SdoptError(f"{folder} is not a folder: give the folder where the interrupted command was writing its output")
    stale = remove_stale_temp_folders(folder, dry_run=args.dry_run)
    for path, size in stale:
        print(f"{'would remove' if args.dry_run else 'removed'} {path} ({size / 2**20:,.1f} MiB)")
    if not stale:
        print(f"nothing to clean in {folder}: no temporary folder of an interrupted sdopt command")
    return 0


def _train_shapes(args: argparse.Namespace) -> int:
    from sdopt.shapes.train import TrainSettings, train_shapes

    changes = {k: getattr(args, k) for k in ("seed", "vae_steps", "unet_steps", "images") if getattr(args, k) is not None}
    out = train_shapes(args.out, TrainSettings(**changes), progress=not args.quiet, force=args.force)
    print(f"trained: {out} (loss curves and timings in {out / 'training'})")
    return 0


def _distill_decoder(args: argparse.Namespace) -> int:
    from sdopt.decoder.distill import DistillSettings, distill_decoder

    changes = {k: getattr(args, k) for k in ("seed", "latents", "channels", "train_steps", "batch", "crop", "height", "width") if getattr(args, k) is not None}
    if args.steps is not None:
        changes["steps_per_image"] = args.steps
    if args.prompts is not None:
        from sdopt.prompts import read_prompts

        changes["prompts"] = tuple(read_prompts(args.prompts))
    out = distill_decoder(args.model, args.output, DistillSettings(**changes), init=args.init, progress=not args.quiet, force=args.force)
    report = json.loads((out / "distill.json").read_text())
    held, probe, flops = report["held_out"], report["probe"], report["flops"]
    print(f"distilled: {out}  ({report['decoder_parameters']:,} decoder parameters, {flops['ratio']:.1%} of the full decoder's FLOPs at {flops['at']})")
    print(f"  held-out latents: {held['psnr_db']:.1f} dB mean PSNR against the full decoder (worst {held['min_psnr_db']:.1f} dB, {held['latents']} latents)")
    print(f"  probe pictures:   {probe['psnr_db']:.1f} dB mean (worst {probe['min_psnr_db']:.1f} dB)")
    print(f"  use it: sdopt export {args.model} --to openvino --vae-decoder {out} -o OUT  (loss curve in {out / 'training'})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from sdopt.export.run import export
    from sdopt.inspect_artifact import describe, format_description

    if args.deep_cache is not None and args.deep_cache < 1:
        raise SdoptError(f"--deep-cache {args.deep_cache}: give the caching interval, an integer of 1 or more (2 or 3 are usual)")
    options = {k: v for k, v in vars(args).items() if k in EXPORT_OPTIONS and v not in (None, False)}
    export(args.model, args.to, args.output, precision=args.precision, force=args.force, loras=args.lora, **options)
    print(format_description(describe(args.output)))
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from sdopt.quant.schemes import format_table

    if args.list:
        print(format_table())
        return 0
    if not (args.model and args.scheme and args.output):
        raise SdoptError("give MODEL, --scheme and -o OUT (or --list to see the schemes and backends)")
    from sdopt.inspect_artifact import describe, format_description
    from sdopt.quant.run import quantize

    components = [c.strip() for c in args.components.split(",") if c.strip()] if args.components is not None else None
    options = {k: v for k, v in (("group_size", args.group_size), ("ratio", args.ratio)) if v is not None}
    if args.calibration_prompts is not None:
        from sdopt.prompts import read_prompts

        options["calibration_prompts"] = read_prompts(args.calibration_prompts, what="calibration prompt file")
    manifest = quantize(args.model, args.scheme, args.output, backend=args.backend, components=components,
                        exclude=args.exclude, device=args.device, force=args.force, options=options, loras=args.lora)
    if args.backend is None:
        print(f"backend: {manifest.export['backend']} (the first supported for {args.scheme} on {args.device}; see --list)")
    print(format_description(describe(args.output)))
    return 0


# Options that pass through to exporters; an exporter refuses those it does not declare.
EXPORT_OPTIONS = ("opset", "optimize", "skip_validation", "height", "width", "batch", "vae_decoder", "deep_cache",
                  "shapes", "batch_range", "static", "refit", "rebuild")


def _optimize(args: argparse.Namespace) -> int:
    from sdopt.bench.optimize import Floor, optimize
    from sdopt.bench.runner import BenchSettings
    from sdopt.prompts import read_prompts

    settings = BenchSettings.resolve(
        None,
        prompts=read_prompts(args.prompts) if args.prompts else None,
        seeds=_int_list(args.seeds, "--seeds") if args.seeds else None,
        steps=args.steps, height=args.height, width=args.width, guidance_scale=args.guidance,
        scheduler=args.scheduler, runs=args.runs, device=args.device,
    )
    floor = Floor(**{k: v for k, v in (("min_psnr", args.min_psnr), ("min_adherence", args.min_adherence),
                                        ("lever_min_psnr", args.lever_min_psnr)) if v is not None})
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    work = Path(args.work) if args.work else Path(str(Path(args.output).absolute()) + ".work")
    distill = {k: v for k, v in (("latents", args.distill_latents), ("train_steps", args.distill_steps)) if v}
    plan = None
    if args.ray is not None:
        from sdopt.cluster.optimize import RayPlan

        plan = RayPlan(address=args.ray or None, kind=args.ray_kind, cpus=args.cpus_per_job or 1.0)
    elif args.ray_kind or args.cpus_per_job:
        raise SdoptError("--ray-kind and --cpus-per-job go with --ray [ADDRESS] (docs/ray.md)")
    outcome = optimize(args.model, args.output, settings, work, floor, quick=args.quick, budget_minutes=args.budget_minutes,
                       distill=distill or None, precision=args.precision, rebench=args.rebench, force=args.force, progress=not args.quiet, say=say,
                       ray=plan)
    print(f"{'candidate':<36} {'exact':<6} {'speed-up':>9} {'PSNR dB':>8} {'adherence':>10}  verdict")
    for r in outcome.rows:
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        psnr = f"{r['psnr_db']:.1f}" if r.get("psnr_db") is not None else "-"
        adh = f"{r['adherence']:.3f}" if r.get("adherence") is not None else "-"
        mark = " <- chosen" if r["name"] == outcome.chosen else ""
        print(f"{r['name']:<36} {'yes' if r['exact'] else 'no':<6} {speed:>9} {psnr:>8} {adh:>10}  {r['why']}{mark}")
    print(f"chosen: {outcome.chosen} -> {outcome.out} (report: {outcome.out / 'optimize' / 'report.md'})")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sdopt.bench.profiles import load_profile
    from sdopt.bench.runner import BenchSettings, run_bench
    from sdopt.prompts import read_prompts

    profiles = [load_profile(p) for p in args.profile or []]
    if len(profiles) > 1 and args.ray is None:
        raise SdoptError("several --profile are several machine kinds: add --ray [ADDRESS] to run each on its nodes (docs/ray.md), "
                         "or bench one profile at a time here")
    if args.build_from:
        if not profiles or args.work is None or args.artifacts or args.reference:
            raise SdoptError("--build-from MODEL builds the artifacts a profile lists: give --profile and --work, and no artifacts or --reference")
    elif args.work or args.only:
        raise SdoptError("--work and --only go with --build-from MODEL (building a profile's artifacts)")
    elif not args.artifacts or not args.reference:
        raise SdoptError("give the artifacts to measure and --reference (or --profile NAME --build-from MODEL --work DIR)")
    prompts = read_prompts(args.prompts) if args.prompts else None
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else None
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    plans, not_built = [], {}
    for profile in profiles or [None]:
        settings = BenchSettings.resolve(
            profile, prompts=prompts, seeds=seeds, steps=args.steps, height=args.height, width=args.width, guidance_scale=args.guidance,
            warmup=args.warmup, runs=args.runs, max_seconds=args.max_seconds, scheduler=args.scheduler, device=args.device, judge=args.judge,
        )
        artifacts, reference = args.artifacts, args.reference
        if args.build_from:
            from sdopt.bench.build import build_profile_artifacts

            only = [n for n in args.only.split(",") if n] if args.only else None
            work = Path(args.work) / profile.name if len(profiles) > 1 else Path(args.work)
            built = build_profile_artifacts(profile, args.build_from, work, settings.height, settings.width, settings.device, only, say)
            artifacts, reference = built.others, built.reference
            not_built.update({f"{profile.name}/{k}" if len(profiles) > 1 else k: v for k, v in built.not_built.items()})
        # On a cluster every profile's report has a folder of its own under OUTPUT.
        out = Path(args.output) / profile.name if args.ray is not None and profile else Path(args.output)
        plans.append((profile, settings, artifacts, reference, out))
    if args.ray is None:
        profile, settings, artifacts, reference, out = plans[0]
        run_bench(artifacts, reference, out, settings, profile=profile, timeout=args.timeout, progress=not args.quiet)
        outs = [out]
    else:
        from sdopt.bench.runner import check_static_shapes, collect
        from sdopt.cluster.bench import ProfileRun, run_matrix

        runs = []
        for profile, settings, artifacts, reference, out in plans:
            entries = collect(artifacts, reference)
            check_static_shapes(entries, settings)
            runs.append(ProfileRun(profile, entries, settings, out))
        run_matrix(runs, address=args.ray or None, timeout=args.timeout, progress=not args.quiet)
        outs = [r.out for r in runs]
    for out in outs:
        print((out / "report.md").read_text())
        print(f"report: {(out / 'report.html').resolve()}")
    for name, why in not_built.items():
        print(f"not built: {name}: {why}", file=sys.stderr)
    return 1 if not_built else 0


def _gate(args: argparse.Namespace) -> int:
    from sdopt.bench import gate
    from sdopt.bench.profiles import load_profile
    from sdopt.bench.rules import load_rules_file

    current = gate.read_report(args.current)
    baseline = gate.read_report(args.baseline) if args.baseline else None
    if args.rules:
        rules, source = load_rules_file(args.rules), args.rules
    elif args.profile or current.get("profile"):
        profile = load_profile(args.profile or current["profile"])
        rules, source = profile.gate or gate.DEFAULT_RULES, f"profile {profile.name}"
    else:
        rules, source = gate.DEFAULT_RULES, "default rules"
    result = gate.gate(current, rules, baseline)
    print(f"rules: {source}; baseline: {args.baseline or 'none (absolute floors only)'}")
    print(gate.table(result))
    if args.markdown:
        Path(args.markdown).write_text(gate.table(result, markdown=True))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result.exit_code


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SdoptError(f"{flag} {text!r}: give integers separated by commas, like 0,1,2") from None


def _output_paths(out: Path, count: int) -> list[Path]:
    """OUT.png for one image; OUT-0.png, OUT-1.png, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]


def _open_image(path: str | None, flag: str):
    """The PIL image at PATH (read now), or an SdoptError naming the flag."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise SdoptError(f"{flag} {path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise SdoptError(f"{flag} {path}: not an image sdopt can read (PNG, JPEG, WebP...): {exc}") from None
    except OSError as exc:
        raise SdoptError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _backend_of(artifact: str) -> str:
    """The backend an artifact names (a PyTorch checkpoint splits its UNet at load for step-feature caching)."""
    from sdopt.manifest import read_manifest
    from sdopt.source import resolve

    return read_manifest(resolve(artifact)).backend


def _generate(args: argparse.Namespace) -> int:
    from sdopt.request import GenerateRequest

    init_image, mask = _open_image(args.init_image, "--init-image"), _open_image(args.mask, "--mask")
    # Without --height/--width an init image keeps its size (down to a multiple of 8), as in Diffusers' img2img.
    width, height = init_image.size if init_image is not None else (512, 512)
    request = GenerateRequest(
        prompt=args.prompt if len(args.prompt) > 1 else args.prompt[0],
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance,
        height=args.height if args.height is not None else height - height % 8,
        width=args.width if args.width is not None else width - width % 8,
        num_images=args.num_images,
        scheduler=args.scheduler,
        init_image=init_image,
        mask_image=mask,
        cache_interval=args.cache_interval,
        loras=_lora_scales(args.lora),
        **({"strength": args.strength} if args.strength is not None else {}),
    ).validate()  # before the (slow) load, so a bad request fails at once
    from sdopt.runtime.schedulers import check_scheduler

    check_scheduler(request.scheduler)  # the precision is checked by the artifact's backend at load (before any weights)
    from sdopt.fsutil import check_output_files

    out = Path(args.output)
    paths = _output_paths(out, request.batch_size)
    check_output_files(paths)  # before the (slow) load and generation

    from tqdm import tqdm

    import sdopt

    pipe = sdopt.load(
        args.artifact,
        device=args.device,
        precision=args.precision,
        attention_slicing=args.attention_slicing,
        vae_tiling=args.vae_tiling,
        cpu_offload=args.cpu_offload,
        compile=args.compile,
        channels_last=args.channels_last,
        **({"reshape": True} if args.reshape else {}),
        **({"deep_cache": True} if (args.cache_interval or 1) > 1 and _backend_of(args.artifact) == "torch" else {}),
    )
    with tqdm(total=request.steps, desc="denoising", unit="step", file=sys.stderr, disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total  # second-order schedulers (heun) take more UNet calls than steps
            bar.update(done - bar.n)

        result = pipe.generate(request, progress=progress)
    if result.problems:
        raise BrokenOutputError(
            f"the generation produced no usable image ({'; '.join(result.problems)}); nothing was saved. "
            "The artifact or the request makes the numbers overflow: try a guidance scale near 7.5, fp32, or export again"
        )
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for image, path in zip(result.images, paths):
        try:
            image.save(path)
        except OSError as exc:  # the disk filled up, or the path changed meanwhile
            raise SdoptError(f"cannot write {path}: {exc.strerror or exc}") from exc
        print(path)
    print(result.summary(), file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from sdopt.serve.settings import ServeSettings

    settings = ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get("SDOPT_API_KEY") or None,
        api_auth=args.api_auth, max_queue=args.max_queue, max_batch=args.max_batch, job_timeout=args.job_timeout,
        max_pixels=args.max_pixels, max_steps=args.max_steps, max_images=args.max_images, name=args.name, lora_dir=args.lora_dir,
    )
    load_options = {"device": args.device, "precision": args.precision}
    if args.ray is None:
        if args.replicas is not None or args.autoscale or args.gpus_per_replica or args.cpus_per_replica is not None:
            raise SdoptError("--replicas, --autoscale, --cpus-per-replica and --gpus-per-replica go with --ray [ADDRESS] (Ray Serve; docs/ray.md)")
        from sdopt.serve.server import serve

        serve(args.artifact, settings, load_options)
        return 0
    from sdopt.cluster.serve import Scaling, parse_autoscale, serve_on_ray
    from sdopt.source import resolve

    scaling = Scaling(replicas=args.replicas, autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
                      cpus_per_replica=args.cpus_per_replica or 1.0, gpus_per_replica=args.gpus_per_replica or 0.0)
    serve_on_ray(str(resolve(args.artifact)), settings, load_options, scaling, args.ray or None)
    return 0


def _exporter_names() -> list[str]:
    from sdopt.export import EXPORTERS  # plain data: imports no backend

    return list(EXPORTERS)


def build_parser() -> argparse.ArgumentParser:
    from sdopt.runtime.schedulers import SCHEDULERS
    from sdopt.zoo import MODELS

    parser = argparse.ArgumentParser(prog="sdopt", description="Export, quantize, run and benchmark Stable Diffusion models.")
    parser.add_argument("--version", action="version", version=f"sdopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-model", help="write a zoo checkpoint: real architecture, random weights (tiny, sd15, sd2-tiny, sdxl-tiny, sdxl) or sdopt's trained shapes model")
    p.add_argument("name", choices=sorted(MODELS), help="; ".join(f"{k}: {m.description}" for k, m in MODELS.items()))
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--seed", type=int, default=0, help="weights seed; the same seed gives identical files (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_init_model)

    p = sub.add_parser("init-lora", help="write a synthetic LoRA for a model (Diffusers' format, deterministic random weights): for tests and the demo")
    p.add_argument("model", help="the Diffusers model folder it is made for")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_init_lora)

    p = sub.add_parser("train-shapes", help="train the shapes model (what `init-model shapes` installs) from sdopt's shapes dataset, on this machine")
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--seed", type=int, help="the same seed and settings give the same weights on the same machine (default 0)")
    p.add_argument("--vae-steps", type=int, help="VAE training steps (default: the shipped model's)")
    p.add_argument("--unet-steps", type=int, help="UNet and text encoder training steps (default: the shipped model's)")
    p.add_argument("--images", type=int, help="training pictures rendered (default: the shipped model's)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_train_shapes)

    p = sub.add_parser("distill-decoder", help="train a tiny decoder (AutoencoderTiny, TAESD's architecture) against a model's own VAE decoder, for `export --vae-decoder`")
    p.add_argument("model", help="Diffusers model folder (or hub id) in full precision")
    p.add_argument("-o", "--output", required=True, help="output folder: a Diffusers AutoencoderTiny folder with distill.json and the loss curve")
    p.add_argument("--seed", type=int, help="the same seed and settings give the same weights on the same machine (default 0)")
    p.add_argument("--latents", type=int, help="latents the model generates to learn from; one in eight held out (default 256)")
    p.add_argument("--prompts", default=None, help="prompt file (one per line) for those latents (default: the shapes dataset's captions)")
    p.add_argument("--steps", type=int, help="denoising steps per generated latent (default 20)")
    p.add_argument("--height", type=int, help="image height of the generated latents (default: the model's)")
    p.add_argument("--width", type=int, help="image width of the generated latents (default: the model's)")
    p.add_argument("--channels", type=int, help="the tiny decoder's width (default: min(64, the full decoder's narrowest stage); TAESD uses 64)")
    p.add_argument("--train-steps", type=int, help="training steps (default 1500)")
    p.add_argument("--batch", type=int, help="latents per training step (default 16)")
    p.add_argument("--crop", type=int, help="latent side of the training crops (default 16)")
    p.add_argument("--init", default=None, help="start from this AutoencoderTiny folder (TAESD's published weights) instead of random weights")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_distill_decoder)

    p = sub.add_parser("inspect", help="show what an artifact is: backend, precision, components, parity, fingerprint")
    p.add_argument("artifact", help="artifact folder or Diffusers model folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-verify", action="store_true", help="do not hash the files (large artifacts): sizes shown as sdopt.json records them")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("clean", help="remove the temporary folders that interrupted exports and quantizations left (.NAME.tmp-*)")
    p.add_argument("folder", nargs="?", default=".", help="the folder that holds them: the output's parent (default: here)")
    p.add_argument("--dry-run", action="store_true", help="list them without removing")
    p.set_defaults(func=_clean)

    p = sub.add_parser("export", help="export a PyTorch checkpoint to another runtime's format")
    p.add_argument("model", help="Diffusers model folder (or hub id) to export from")
    p.add_argument("--to", required=True, help="target format: " + ", ".join(sorted(_exporter_names())))
    p.add_argument("-o", "--output", required=True, help="output artifact folder")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="weights precision (default fp32). ONNX: fp32 or fp16; fp16 is a GPU precision, on CPUs ORT wraps it in casts and it is no faster (docs/onnx.md). OpenVINO: fp32, fp16 or bf16")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--opset", type=int, default=None, help="onnx: opset version")
    p.add_argument("--optimize", action="store_true", help="onnx: apply ONNX Runtime graph optimizations and fusions")
    p.add_argument("--skip-validation", action="store_true", help="do not fail when parity exceeds tolerance (recorded in the manifest)")
    p.add_argument("--height", type=int, default=None, help="openvino: static image height; tensorrt: the size the engines are best at")
    p.add_argument("--width", type=int, default=None, help="openvino: static image width; tensorrt: as --height")
    p.add_argument("--batch", type=int, default=None, help="openvino: static batch (images per call; the UNet runs twice that with guidance)")
    p.add_argument("--shapes", default=None, metavar="HxW,...",
                   help="tensorrt: the image sizes the engines must run (e.g. 512x512,768x768); the first is the one they are tuned for")
    p.add_argument("--batch-range", default=None, metavar="MIN:MAX", help="tensorrt: images per request the engines take (default 1:4)")
    p.add_argument("--static", action="store_true", help="tensorrt: one size and batch only (smallest, fastest engines)")
    p.add_argument("--refit", action="store_true", help="tensorrt: refittable engines (UNet weights, e.g. a fused LoRA, swap without a rebuild)")
    p.add_argument("--rebuild", action="store_true",
                   help="tensorrt: MODEL is a TensorRT artifact; build its engines again on this machine from the ONNX graphs it keeps, "
                        "with the shapes and precision its manifest records (for engines built for another GPU or TensorRT version)")
    p.add_argument("--vae-decoder", default=None, metavar="PATH",
                   help="replace the VAE decoder by this tiny decoder (an AutoencoderTiny folder: `sdopt distill-decoder` writes one, TAESD's weights are one); "
                        "its PSNR against the full decoder is measured and recorded")
    p.add_argument("--deep-cache", type=int, default=None, metavar="N",
                   help="step-feature caching (DeepCache): export the UNet as two graphs (whole, and its shallow branch) and run the whole UNet "
                        "every N-th step by default (a request's cache_interval overrides; 1 keeps both graphs but caches nothing)")
    _add_lora_flag(p, "fused into the weights before export (recorded in the manifest)")
    p.set_defaults(func=_export)

    p = sub.add_parser("quantize", help="quantize a PyTorch checkpoint's weights (int8, int4, nf4, fp8) into a reloadable artifact")
    p.add_argument("model", nargs="?", help="Diffusers model folder (or hub id) in full precision")
    p.add_argument("--scheme", help="int8, int8-dynamic, int4, nf4 or fp8 (--list shows which backend does which)")
    p.add_argument("--backend", default=None, help="torchao, quanto, bnb, or nncf for OpenVINO artifacts (default: the first that supports the scheme on --device)")
    p.add_argument("--components", default=None, help="comma-separated: unet, text_encoder, vae (default: unet,text_encoder)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="keep layers whose name matches this fnmatch pattern in full precision, e.g. 'unet.conv_in' (repeatable)")
    p.add_argument("--device", default="cpu", help="where the artifact will run: cpu or cuda (default cpu)")
    p.add_argument("-o", "--output", help="output artifact folder")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--group-size", type=int, default=None, help="nncf int4/nf4: weights per scale group (default 128; -1: per channel)")
    p.add_argument("--ratio", type=float, default=None, help="nncf int4/nf4: fraction of layers in 4 bits, the rest int8 (default 1.0)")
    p.add_argument("--calibration-prompts", default=None, metavar="FILE", help="nncf int8-static: prompts to calibrate activations on, one per line (default: a built-in set)")
    p.add_argument("--list", action="store_true", help="print the backend x scheme x device capability table and exit")
    _add_lora_flag(p, "fused into the weights before quantizing (PyTorch checkpoints; recorded in the manifest)")
    p.set_defaults(func=_quantize)

    p = sub.add_parser(
        "bench",
        help="measure artifacts side by side: latency per stage, memory, size, quality vs a reference",
        description="Measure artifacts side by side. Either name them (ARTIFACT... --reference REF), or let a "
        "profile's [[artifacts]] list be built from one checkpoint (--profile NAME --build-from MODEL --work DIR); "
        "then exit 1 if one could not be built here (the report has the others).",
    )
    p.add_argument("artifacts", nargs="*", help="artifact folders; PATH@bf16 runs a torch artifact in another precision")
    p.add_argument("--reference", help="the artifact whose images count as correct (usually the fp32 checkpoint)")
    p.add_argument("--build-from", metavar="MODEL", help="build the profile's artifacts from this checkpoint (reused when already under --work)")
    p.add_argument("--work", help="with --build-from: where the built artifacts are kept")
    p.add_argument("--only", help="with --build-from: comma-separated artifact names of the profile (the reference always runs)")
    p.add_argument("--profile", action="append", help="hardware profile name (sdopt's own, or ./profiles/NAME.toml) or a .toml file; "
                   "with --ray, repeat it to run the matrix on each profile's kind of node, one report each under OUTPUT/NAME/")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run each artifact as a Ray task on a node of its profile's kind ([resources] in the profile): on the cluster at ADDRESS "
                        "(ray://HOST:10001, HOST:6379 or auto), else on a local one started for the run; artifacts must be on a path every node sees (docs/ray.md)")
    p.add_argument("--prompts", help="file with one prompt per line")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--steps", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the profile's, else 7.5)")
    p.add_argument("--scheduler")
    p.add_argument("--warmup", type=int, help="warm-up generate calls before measuring")
    p.add_argument("--runs", type=int, help="measured passes over all prompts and seeds")
    p.add_argument("--max-seconds", type=float, default=None, help="per-artifact time budget: no more warm-ups or measured passes once spent (at least one pass runs, the first generate itself when it alone outlasts the budget and covers every prompt and seed; the report says so)")
    p.add_argument("--device", help="default: the profile's, else cpu")
    p.add_argument("--judge", help="prompt adherence judge: auto (classical when every prompt is a shapes caption, else none; default), none, classical, "
                   "openai (a VLM behind an OpenAI-compatible API: SDOPT_JUDGE_URL, SDOPT_JUDGE_MODEL, SDOPT_JUDGE_API_KEY), "
                   "transformers (a local VLM folder in SDOPT_JUDGE_MODEL); docs/judges.md")
    p.add_argument("--timeout", type=float, default=None, help="seconds an artifact may take before it is recorded as failed")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.set_defaults(func=_bench)

    p = sub.add_parser("serve", help="serve an artifact over HTTP: AUTOMATIC1111 and OpenAI APIs, jobs with progress and cancel, a web page")
    p.add_argument("artifact", help="artifact folder, Diffusers model folder, or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="default 7860, as AUTOMATIC1111")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (default: env SDOPT_API_KEY)")
    p.add_argument("--api-auth", default=None, metavar="USER:PASS", help="require HTTP Basic credentials (as AUTOMATIC1111's --api-auth)")
    p.add_argument("--max-queue", type=int, default=64, help="jobs that may wait; one more gets 429 (default 64)")
    p.add_argument("--max-batch", type=int, default=4, help="images in one generate call, across requests (default 4)")
    p.add_argument("--job-timeout", type=float, default=600.0, help="seconds from submission to result (default 600)")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest width x height (default 1048576)")
    p.add_argument("--max-steps", type=int, default=150, help="most denoising steps a request may ask (default 150)")
    p.add_argument("--max-images", type=int, default=8, help="most images one request may ask (default 8)")
    p.add_argument("--name", default=None, help="model name the APIs report (default: the artifact folder's name)")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="LoRAs (DIR/NAME.safetensors) a prompt may apply as <lora:NAME:WEIGHT>, AUTOMATIC1111's syntax (torch backend; docs/serve.md)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None, help="default: the artifact's")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="serve through Ray Serve: replicas behind one endpoint, on the cluster at ADDRESS or a local one (docs/ray.md)")
    p.add_argument("--replicas", type=int, default=None, help="with --ray: replicas, each loading the artifact once (default 1)")
    p.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="with --ray: let Ray Serve's autoscaler keep MIN to MAX replicas")
    p.add_argument("--cpus-per-replica", type=float, default=None, help="with --ray: CPUs each replica holds (default 1; also its thread count)")
    p.add_argument("--gpus-per-replica", type=float, default=None, help="with --ray: GPUs each replica holds (default 0; 1 with --device cuda is usual)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("optimize", help="build the candidates this machine can run, bench them against fp32, keep the fastest above a quality floor")
    p.add_argument("model", help="Diffusers model folder (or hub id) in full precision")
    p.add_argument("-o", "--output", required=True, help="output artifact folder (the chosen candidate, with its bench report in optimize/)")
    p.add_argument("--work", default=None, help="where candidates are built and kept, so a second run resumes (default: OUTPUT.work)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-psnr", type=float, default=None, help="floor for exact candidates: worst-case PSNR vs fp32 in dB (default 30)")
    p.add_argument("--min-adherence", type=float, default=None, help="floor for levers (tiny decoder, caching): adherence at least this, "
                   "besides within 0.05 of fp32's (the shapes judge; without it levers must hold the PSNR floor)")
    p.add_argument("--lever-min-psnr", type=float, default=None, help="where no judge reads the prompts: the PSNR floor for levers "
                   "(default: --min-psnr; levers change the computation, so 30 dB is usually out of their reach)")
    p.add_argument("--prompts", default=None, help="prompt file, one per line (default: the bench's)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--runs", type=int, default=None, help="timed runs per candidate (default 3)")
    p.add_argument("--quick", action="store_true", help="a small candidate set (OpenVINO fp32, with and without caching): a first look")
    p.add_argument("--budget-minutes", type=float, default=None, help="stop building new candidates after this long (the built ones are still benched)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="what the OpenVINO candidates' float parts run in (default: bf16 where this CPU has it natively, else fp32)")
    p.add_argument("--distill-latents", type=int, default=None, help="latents the tiny-decoder candidates learn from (default 256; fewer for big models)")
    p.add_argument("--distill-steps", type=int, default=None, help="training steps of the tiny-decoder candidates (default 1500; fewer for big models)")
    p.add_argument("--rebench", action="store_true", help="measure again even where the work folder holds a bench of the same candidates and settings")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="build the candidates in parallel and bench them on a Ray cluster (at ADDRESS, else a local one); the work folder must be on a path every node sees (docs/ray.md)")
    p.add_argument("--ray-kind", default=None, metavar="RESOURCE",
                   help="with --ray: the custom resource naming the node kind every build and bench job runs on, so the timings compare (ray start --resources '{\"RESOURCE\": 1}')")
    p.add_argument("--cpus-per-job", type=float, default=None, help="with --ray: CPUs each build and bench job holds (default 1; also its thread count)")
    p.set_defaults(func=_optimize)

    p = sub.add_parser("gate", help="check a bench report against a baseline and thresholds (exit 0 ok, 1 regression, 2 incomparable)")
    p.add_argument("current", help="report.json of this run")
    p.add_argument("--baseline", help="report.json to compare with; without it only absolute floors are checked")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rules", help="TOML file with a [gate] table of metric = rule")
    group.add_argument("--profile", help="take the rules from this hardware profile (default: the report's profile)")
    p.add_argument("--markdown", help="also write the table as Markdown here (for a CI job summary)")
    p.add_argument("--json", help="also write the verdict as JSON here")
    p.set_defaults(func=_gate)

    p = sub.add_parser("generate", help="generate images with any artifact")
    p.add_argument("artifact", help="artifact folder, Diffusers model folder, or hub id")
    p.add_argument("--prompt", "-p", required=True, action="append", help="the prompt (repeat for several)")
    p.add_argument("--negative-prompt", "-n", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (<=1 turns it off)")
    p.add_argument("--height", type=int, default=None, help="default 512, or the init image's height")
    p.add_argument("--width", type=int, default=None, help="default 512, or the init image's width")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} (default: the checkpoint's own)")
    p.add_argument("--init-image", default=None, metavar="PATH", help="img2img: start from this image (resized to --height/--width)")
    p.add_argument("--strength", type=float, default=None, help="img2img/inpaint: how much of the schedule repaints the image, (0, 1] (default 0.8)")
    p.add_argument("--mask", default=None, metavar="PATH", help="inpaint: white = repaint, black = keep; the init image's size (needs --init-image)")
    p.add_argument("--cache-interval", type=int, default=None, metavar="N",
                   help="step-feature caching: the whole UNet every N-th step, its shallow branch between (default: the artifact's, set by export --deep-cache; 1 = off)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None, help="default: the artifact's")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--attention-slicing", action="store_true", help="torch: compute attention in slices (less memory)")
    p.add_argument("--vae-tiling", action="store_true", help="torch: decode large images in tiles (less memory)")
    p.add_argument("--cpu-offload", action="store_true", help="torch on CUDA: keep idle components in CPU memory")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch: torch.compile the UNet and VAE decode (MODE: default, max-autotune, max-autotune-no-cudagraphs, "
                        "reduce-overhead = with CUDA graphs; or a backend: cudagraphs, eager). Compiles in the first image")
    p.add_argument("--channels-last", action="store_true", help="torch: NHWC memory layout for the UNet and VAE decoder")
    p.add_argument("--reshape", action="store_true", help="openvino: let a static-shape artifact run another size (compiled on first use)")
    _add_lora_flag(p, "applied for this run (torch backend; other backends take LoRAs fused at export)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="output PNG (several images: OUT-0.png, OUT-1.png, ...)")
    p.set_defaults(func=_generate)
    return parser


def _add_lora_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help=f"a LoRA (.safetensors, Diffusers or kohya format) {what}, at SCALE (default 1.0); repeatable")


def _lora_scales(items: list[str]) -> dict[str, float] | None:
    """--lora FILE[:SCALE] flags as a request's {file: scale}."""
    from sdopt.lora import parse_loras

    return {str(l.path): l.scale for l in parse_loras(items)} or None


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so a terminated export still removes its temporary folder."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (sdopt.cli.main called from a worker): leave it
        pass


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings meant for users (bf16 emulated, bf16 asked but fp32 runs) read like our errors."""
    return f"sdopt: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _exit_on_sigterm()
    warnings.formatwarning = _format_warning
    try:
        return args.func(args)
    except SdoptError as exc:
        print(f"sdopt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sdopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
