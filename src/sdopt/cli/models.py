"""Zoo checkpoints, synthetic LoRAs and embeddings, and the models sdopt trains: init-model, init-lora, init-embedding,
train-shapes, distill-decoder."""

from __future__ import annotations

import argparse
import json

from sdopt.cli.common import user_path
from sdopt.errors import require_installed


def _needs_torch() -> None:
    """Every command here writes or trains torch weights. torch is one of sdopt's own dependencies, missing only from an
    install without them (pip install --no-deps): said as generate says it, not as a ModuleNotFoundError traceback.
    Found, not imported: a bad flag is still refused before torch's import (seconds; distill-decoder's --channels 0)."""
    require_installed("torch", "all")


def _init_model(args: argparse.Namespace) -> int:
    _needs_torch()
    from sdopt.zoo import write_model

    out = write_model(args.name, args.out, seed=args.seed, progress=not args.quiet, force=args.force)
    print(out)
    return 0


def _init_lora(args: argparse.Namespace) -> int:
    _needs_torch()
    from sdopt.zoo.lora import write_lora

    print(write_lora(args.model, args.out, seed=args.seed, force=args.force))
    return 0


def _init_embedding(args: argparse.Namespace) -> int:
    _needs_torch()
    from sdopt.zoo.embedding import write_embedding

    print(write_embedding(args.model, args.out, vectors=args.vectors, seed=args.seed, force=args.force))
    return 0


def _train_shapes(args: argparse.Namespace) -> int:
    _needs_torch()
    from sdopt.shapes.train import TrainSettings, train_shapes

    changes = {k: getattr(args, k) for k in ("seed", "vae_steps", "unet_steps", "images") if getattr(args, k) is not None}
    out = train_shapes(args.out, TrainSettings(**changes), progress=not args.quiet, force=args.force)
    print(f"trained: {out} (loss curves and timings in {out / 'training'})")
    return 0


def _distill_decoder(args: argparse.Namespace) -> int:
    _needs_torch()
    from sdopt.decoder.distill import DistillSettings, distill_decoder

    changes = {k: getattr(args, k) for k in ("seed", "latents", "channels", "train_steps", "batch", "crop", "height", "width") if getattr(args, k) is not None}
    if args.steps is not None:
        changes["steps_per_image"] = args.steps
    if args.prompts is not None:
        from sdopt.prompts import read_prompts

        changes["prompts"] = tuple(read_prompts(args.prompts))
    out = distill_decoder(args.model, args.output, DistillSettings(**changes), init=args.init, progress=not args.quiet, force=args.force)
    report = json.loads((out / "distill.json").read_text(encoding="utf-8"))
    held, probe, flops = report["held_out"], report["probe"], report["flops"]
    print(f"distilled: {out}  ({report['decoder_parameters']:,} decoder parameters, {flops['ratio']:.1%} of the full decoder's FLOPs at {flops['at']})")
    print(f"  held-out latents: {held['psnr_db']:.1f} dB mean PSNR against the full decoder (worst {held['min_psnr_db']:.1f} dB, {held['latents']} latents)")
    print(f"  probe pictures:   {probe['psnr_db']:.1f} dB mean (worst {probe['min_psnr_db']:.1f} dB)")
    print(f"  use it: sdopt export {args.model} --to openvino --vae-decoder {out} -o OUT  (loss curve in {out / 'training'})")
    return 0


def add_init_model(sub) -> None:
    from sdopt.zoo import MODELS

    p = sub.add_parser("init-model", help="write a zoo checkpoint: real architecture, random weights (tiny, tiny-inpaint, tiny-lcm, sd15, sd2-tiny, "
                                          "sdxl-tiny, sdxl-tiny-inpaint, sdxl-tiny-lcm, sdxl) or sdopt's trained shapes model")
    p.add_argument("name", choices=sorted(MODELS), help="; ".join(f"{k}: {m.description}" for k, m in MODELS.items()))
    p.add_argument("out", type=user_path, help="output folder (must not exist)")
    p.add_argument("--seed", type=int, default=0, help="weights seed; the same seed gives identical files (default 0; not for shapes, whose trained weights are shipped: sdopt train-shapes --seed)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (the folder written is still printed)")
    p.set_defaults(func=_init_model)


def add_init_lora(sub) -> None:
    p = sub.add_parser("init-lora", help="write a synthetic LoRA for a model (Diffusers' format, deterministic random weights): for tests and the demo")
    p.add_argument("model", type=user_path, help="the Diffusers model folder it is made for")
    p.add_argument("out", type=user_path, help="output .safetensors file")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_init_lora)


def add_init_embedding(sub) -> None:
    p = sub.add_parser("init-embedding", help="write a synthetic textual inversion embedding for a model (AUTOMATIC1111's format, "
                                              "deterministic random vectors): for tests and the demo")
    p.add_argument("model", type=user_path, help="the Diffusers model folder it is made for")
    p.add_argument("out", type=user_path, help="output .safetensors file; its name is the word prompts use (e.g. mystyle.safetensors: 'a fox, mystyle')")
    p.add_argument("--vectors", type=int, default=4, help="how many vectors (tokens) it stands for (default 4)")
    p.add_argument("--seed", type=int, default=0, help="vectors seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_init_embedding)


def add_train_shapes(sub) -> None:
    p = sub.add_parser("train-shapes", help="train the shapes model (what `init-model shapes` installs) from sdopt's shapes dataset, on this machine")
    p.add_argument("out", type=user_path, help="output folder (must not exist)")
    p.add_argument("--seed", type=int, help="the same seed and settings give the same weights on the same machine (default 0)")
    p.add_argument("--vae-steps", type=int, help="VAE training steps (default: the shipped model's)")
    p.add_argument("--unet-steps", type=int, help="UNet and text encoder training steps (default: the shipped model's)")
    p.add_argument("--images", type=int, help="training pictures rendered (default: the shipped model's)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (the folder trained is still printed)")
    p.set_defaults(func=_train_shapes)


def add_distill_decoder(sub) -> None:
    p = sub.add_parser("distill-decoder", help="train a tiny decoder (AutoencoderTiny, TAESD's architecture) against a model's own VAE decoder, for `export --vae-decoder`")
    p.add_argument("model", type=user_path, help="Diffusers model folder (or hub id) in full precision")
    p.add_argument("-o", "--output", required=True, type=user_path, help="output folder: a Diffusers AutoencoderTiny folder with distill.json and the loss curve")
    p.add_argument("--seed", type=int, help="the same seed and settings give the same weights on the same machine (default 0)")
    p.add_argument("--latents", type=int, help="latents the model generates to learn from; one in eight held out (default 256)")
    p.add_argument("--prompts", type=user_path, default=None, help="prompt file (one per line) for those latents (default: the shapes dataset's captions)")
    p.add_argument("--steps", type=int, help="denoising steps per generated latent (default 20)")
    p.add_argument("--height", type=int, help="image height of the generated latents (default: the model's)")
    p.add_argument("--width", type=int, help="image width of the generated latents (default: the model's)")
    p.add_argument("--channels", type=int, help="the tiny decoder's width (default: min(64, the full decoder's narrowest stage); TAESD uses 64)")
    p.add_argument("--train-steps", type=int, help="training steps (default 1500)")
    p.add_argument("--batch", type=int, help="latents per training step (default 16)")
    p.add_argument("--crop", type=int, help="latent side of the training crops (default 16)")
    p.add_argument("--init", type=user_path, default=None, help="start from this AutoencoderTiny folder (TAESD's published weights) instead of random weights")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (the summary is still printed)")
    p.set_defaults(func=_distill_decoder)
