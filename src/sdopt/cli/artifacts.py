"""Making and looking at artifacts: inspect, clean, export, quantize."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from sdopt.cli.common import add_embedding_flag, add_lora_flag, add_request_default_flags, comma_list, exporter_names, path_list, user_path
from sdopt.errors import SdoptError
from sdopt.quant.schemes import OVERFLOW_FIXES
from sdopt.rewrite import OPTIONAL_REWRITES


# Options that pass through to exporters; an exporter refuses those it does not declare.
EXPORT_OPTIONS = ("opset", "optimize", "skip_validation", "height", "width", "batch", "vae_decoder", "deep_cache",
                  "shapes", "batch_range", "static", "refit", "rebuild", "no_rewrites", "rewrite", "calibration_prompts")


def _inspect(args: argparse.Namespace) -> int:
    from sdopt.inspect_artifact import describe, format_description

    data = describe(args.artifact, verify=not args.no_verify)
    print(json.dumps(data, indent=2) if args.json else format_description(data))
    return 0


def _clean(args: argparse.Namespace) -> int:
    from sdopt.outputs import remove_stale_temp_folders, temp_folders_in_use

    folder = Path(args.folder)
    if not folder.is_dir():
        raise SdoptError(f"{folder} is not a folder: give the folder where the interrupted command was writing its output")
    stale = remove_stale_temp_folders(folder, dry_run=args.dry_run)
    for path, size in stale:
        print(f"{'would remove' if args.dry_run else 'removed'} {path} ({size / 2**20:,.1f} MiB)")
    in_use = temp_folders_in_use(folder)
    for path, pid, host in in_use:  # said, so that "nothing to clean" is never said beside a folder it left
        where = f"pid {pid} on this machine" if host == socket.gethostname() else f"pid {pid} on {host} (another machine: not judged from here)"
        print(f"left {path}: its writer is still running ({where}); remove it yourself if that process is not an sdopt command")
    if not stale and not in_use:
        print(f"nothing to clean in {folder}: no temporary folder of an interrupted sdopt command")
    _say_cache_size()
    return 0


def _say_cache_size() -> None:
    """Where sdopt's per-user cache is and what it holds: one sd15 generate on OpenVINO left a 3.4 GB compiled UNet
    there, which a user freeing space with `sdopt clean` was never told of. Said, not removed: it is not an interrupted
    command's, and a removed compiled model costs the next load its compile."""
    from sdopt.file_reading import tree_size, user_cache_dir

    try:
        cache = user_cache_dir()
        size = tree_size(cache) if cache.is_dir() else 0
    except (SdoptError, OSError):  # no cache folder to name (HOME unset), or one that cannot be read: nothing to say
        return
    if size:
        print(f"sdopt's cache {cache} holds {size / 2**20:,.1f} MiB (compiled OpenVINO models, TensorRT timing caches, "
              "file hash records): not removed by clean; all of it is rebuilt when needed, so you may delete it to free the space")


def _export(args: argparse.Namespace) -> int:
    from sdopt.export.run import export
    from sdopt.inspect_artifact import describe, format_description

    # Unset flags are None, False or []; a 0 is a value (export refuses --deep-cache 0 itself).
    options = {k: v for k, v in vars(args).items() if k in EXPORT_OPTIONS and v is not None and v is not False and v != []}
    if "calibration_prompts" in options:
        from sdopt.prompts import read_prompts

        options["calibration_prompts"] = read_prompts(options["calibration_prompts"], what="calibration prompt file")
    export(args.model, args.to, args.output, precision=args.precision, force=args.force, loras=args.lora, progress=not args.quiet,
           default_steps=args.default_steps, default_guidance=args.default_guidance, embeddings=args.embedding, **options)
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

    components = comma_list(args.components) if args.components is not None else None
    options = {k: v for k, v in (("group_size", args.group_size), ("ratio", args.ratio)) if v is not None}
    if args.calibration_prompts is not None:
        from sdopt.prompts import read_prompts

        options["calibration_prompts"] = read_prompts(args.calibration_prompts, what="calibration prompt file")
    if args.calibration_schedulers is not None:
        options["calibration_schedulers"] = comma_list(args.calibration_schedulers)
    if args.overflow_fix is not None:
        options["overflow_fix"] = args.overflow_fix
    if args.calibration_images is not None:
        options["calibration_images"] = path_list(args.calibration_images)
    manifest = quantize(args.model, args.scheme, args.output, backend=args.backend, components=components,
                        exclude=args.exclude, device=args.device, force=args.force, options=options, loras=args.lora,
                        progress=not args.quiet, default_steps=args.default_steps, default_guidance=args.default_guidance)
    if args.backend is None:  # a note, on stderr: stdout is the artifact's summary alone, as export's and inspect's
        print(f"backend: {manifest.export['backend']} (the first supported for {args.scheme} on {args.device}; see --list)", file=sys.stderr)
    print(format_description(describe(args.output)))
    return 0


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show what an artifact is: backend, precision, components, parity, fingerprint")
    p.add_argument("artifact", type=user_path, help="artifact folder or Diffusers model folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-verify", action="store_true", help="do not hash the files (large artifacts): sizes shown as sdopt.json records them")
    p.set_defaults(func=_inspect)


def add_clean(sub) -> None:
    p = sub.add_parser("clean", help="remove the temporary folders that interrupted exports and quantizations left (.NAME.tmp-*)")
    p.add_argument("folder", type=user_path, nargs="?", default=".", help="the folder that holds them: the output's parent (default: here)")
    p.add_argument("--dry-run", action="store_true", help="list them without removing")
    p.set_defaults(func=_clean)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a PyTorch checkpoint to another runtime's format")
    p.add_argument("model", type=user_path, help="Diffusers model folder (or hub id) to export from")
    p.add_argument("--to", required=True, help="target format: " + ", ".join(sorted(exporter_names())))
    p.add_argument("-o", "--output", type=user_path, required=True, help="output artifact folder")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16", "int8", "fp8"),
                   help="weights precision (default fp32). ONNX: fp32 or fp16; fp16 is a GPU precision, on CPUs ORT wraps it in casts and it is no faster (docs/onnx.md). "
                        "OpenVINO: fp32, fp16 or bf16. TensorRT: those, or int8/fp8 (the UNet quantized by NVIDIA ModelOpt, calibrated; the rest fp16)")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (the artifact's summary is still printed)")
    p.add_argument("--opset", type=int, default=None, help="onnx, tensorrt: the ONNX opset the graphs are exported at, 14 to 21 (default 18)")
    p.add_argument("--optimize", action="store_true", help="onnx: apply ONNX Runtime graph optimizations and fusions")
    p.add_argument("--skip-validation", action="store_true", help="keep a component whose parity against PyTorch exceeds its tolerance (measured and recorded in the manifest all the same)")
    p.add_argument("--height", type=int, default=None, help="openvino: static image height; tensorrt: the size the engines are best at")
    p.add_argument("--width", type=int, default=None, help="openvino: static image width; tensorrt: as --height")
    p.add_argument("--batch", type=int, default=None, help="openvino: static batch (images per call; the UNet runs twice that with guidance)")
    p.add_argument("--shapes", default=None, metavar="HxW,...",
                   help="tensorrt: the image sizes the engines must run (e.g. 512x512,768x768); the first is the one they are tuned for")
    p.add_argument("--batch-range", default=None, metavar="MIN:MAX", help="tensorrt: images per request the engines take (default 1:4)")
    p.add_argument("--static", action="store_true", help="tensorrt: one size and batch only (smallest, fastest engines)")
    p.add_argument("--refit", action="store_true", help="tensorrt: refittable engines (UNet weights, e.g. a fused LoRA, swap without a rebuild)")
    p.add_argument("--calibration-prompts", type=user_path, default=None, metavar="FILE",
                   help="tensorrt --precision int8|fp8: prompts whose generations calibrate the UNet's activation ranges, one per line (default: a built-in set)")
    p.add_argument("--rebuild", action="store_true",
                   help="tensorrt: MODEL is a TensorRT artifact; build its engines again on this machine from the ONNX graphs it keeps, "
                        "with the shapes and precision its manifest records (for engines built for another GPU or TensorRT version)")
    p.add_argument("--vae-decoder", type=user_path, default=None, metavar="PATH",
                   help="replace the VAE decoder by this tiny decoder (an AutoencoderTiny folder: `sdopt distill-decoder` writes one, TAESD's weights are one); "
                        "its PSNR against the full decoder is measured and recorded")
    p.add_argument("--deep-cache", type=int, default=None, metavar="N",
                   help="step-feature caching (DeepCache): export the UNet as two graphs (whole, and its shallow branch) and run the whole UNet "
                        "every N-th step by default (a request's cache_interval overrides; 1 keeps both graphs but caches nothing)")
    p.add_argument("--no-rewrites", action="store_true",
                   help="trace the modules as the checkpoint defines them, without sdopt's exact rewrites (by default the VAE decoder's "
                        "upsample+conv pairs become transposed convolutions: same outputs, fewer FLOPs, docs/optimize.md; and --to onnx "
                        "gives attention to ONNX Runtime's fused operator: graphs of standard operators only with this flag)")
    p.add_argument("--rewrite", action="append", default=[], choices=sorted(OPTIONAL_REWRITES), metavar="NAME",
                   help="also apply this optional exact rewrite (repeatable): transformer_channels_first keeps the UNet's transformers "
                        "in [B, C, H, W] with 1x1 convolutions for their linear layers — faster int8 on CPUs without VNNI (docs/optimize.md); "
                        "attention_by_head computes the UNet's self-attention a head at a time — ONNX Runtime's memory at large sizes "
                        "falls several-fold, for time; attention_fused (--to onnx only, and its default) makes every UNet and VAE "
                        "attention ONNX Runtime's MultiHeadAttention — less memory and less time, a graph only ONNX Runtime runs (docs/onnx.md)")
    add_lora_flag(p, "fused into the weights before export (recorded in the manifest)")
    add_embedding_flag(p, "fused into the text encoders (recorded in the manifest; prompts use it on every backend)")
    add_request_default_flags(p)
    p.set_defaults(func=_export)


def add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a PyTorch checkpoint's weights (int8, int4, nf4, fp8), an OpenVINO artifact (NNCF: "
                       "int8, int4, nf4 weights; int8-static weights and activations) or an ONNX artifact (ONNX Runtime: int8-static) "
                       "into a reloadable artifact")
    p.add_argument("model", type=user_path, nargs="?", help="Diffusers model folder (or hub id) in full precision, an OpenVINO artifact (--backend nncf) or an ONNX artifact (--backend onnxruntime)")
    p.add_argument("--scheme", help="int8, int8-dynamic, int4, nf4, fp8 or int8-static (--list shows which backend does which)")
    p.add_argument("--backend", default=None, help="torchao, quanto, bnb; nncf for OpenVINO artifacts; onnxruntime for ONNX artifacts (default: the first that supports the scheme on --device)")
    p.add_argument("--components", default=None, help="comma-separated: unet, text_encoder, text_encoder_2 (SDXL), vae (= vae_decoder and vae_encoder), vae_decoder, vae_encoder; text_encoder also takes text_encoder_2 (default: unet,text_encoder)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="keep layers whose name matches this fnmatch pattern in full precision, e.g. 'unet.conv_in' (repeatable)")
    p.add_argument("--device", default="cpu", help="where the artifact will run: cpu or cuda (default cpu)")
    p.add_argument("-o", "--output", type=user_path, help="output artifact folder")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (the artifact's summary is still printed)")
    p.add_argument("--group-size", type=int, default=None, help="nncf int4/nf4: weights per scale group (default 128; -1: per channel)")
    p.add_argument("--ratio", type=float, default=None, help="nncf int4/nf4: fraction of layers in 4 bits, the rest int8 (default 1.0)")
    p.add_argument("--calibration-prompts", type=user_path, default=None, metavar="FILE", help="int8-static (nncf, onnxruntime): prompts to calibrate activations on, one per line (default: a built-in set)")
    p.add_argument("--calibration-schedulers", default=None, metavar="NAMES",
                   help="int8-static (nncf, onnxruntime) with vae_decoder in --components: calibrate the decoder on these schedulers' runs alone, in turn "
                        "(default: the checkpoint's, then euler,euler_a,dpmpp_2m); name the ones you generate with")
    p.add_argument("--calibration-images", default=None, metavar="PATHS",
                   help="int8-static (nncf, onnxruntime) on an inpainting checkpoint (which needs them): a folder of images, or comma-separated image files, "
                        "that calibration repaints under masks sdopt draws (a few photos like the ones it will inpaint)")
    p.add_argument("--overflow-fix", default=None, choices=("auto", *OVERFLOW_FIXES),
                   help="int8-static: 7-bit weights in every layer (enable), the first only (first-layer, nncf only) or none, so 8-bit "
                        "products cannot saturate on CPUs without VNNI/AMX (default auto: enable where this CPU lacks them, else nncf's "
                        "first-layer, onnxruntime's none)")
    p.add_argument("--list", action="store_true", help="print the backend x scheme x device capability table and exit")
    add_lora_flag(p, "fused into the weights before quantizing (PyTorch checkpoints; recorded in the manifest)")
    add_request_default_flags(p)
    p.set_defaults(func=_quantize)
