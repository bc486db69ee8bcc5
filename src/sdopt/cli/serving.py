"""sdopt serve: one process under uvicorn, or replicas on Ray Serve."""

from __future__ import annotations

import argparse

from sdopt.cli.common import add_load_flags, add_threads_flag, user_path
from sdopt.errors import SdoptError


def _serve(args: argparse.Namespace) -> int:
    import os

    from sdopt.serve.settings import ServeSettings

    settings = ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get("SDOPT_API_KEY") or None,
        api_auth=args.api_auth, max_queue=args.max_queue, max_batch=args.max_batch, job_timeout=args.job_timeout,
        max_pixels=args.max_pixels, max_steps=args.max_steps, max_images=args.max_images, max_body_bytes=args.max_body_bytes,
        **({"max_image_bytes": args.max_image_bytes} if args.max_image_bytes is not None else {}), name=args.name, lora_dir=args.lora_dir,
        embeddings_dir=args.embeddings_dir, image_dir=args.image_dir, allowed_hosts=tuple(n.strip() for n in (args.allowed_hosts or "").split(",") if n.strip()),
        steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler,
    )
    load_options = {"device": args.device, "precision": args.precision, **({"reshape": True} if args.reshape else {}),
                    **({"threads": args.threads} if args.threads is not None else {}),
                    **({"deep_cache": args.deep_cache} if args.deep_cache is not None else {})}
    if args.ray is None:
        # --gpus-per-replica 0 too: said, not dropped (as --cpus-per-replica 0 is)
        if args.replicas is not None or args.autoscale or args.gpus_per_replica is not None or args.cpus_per_replica is not None:
            raise SdoptError("--replicas, --autoscale, --cpus-per-replica and --gpus-per-replica go with --ray [ADDRESS] (Ray Serve; docs/ray.md)")
        from sdopt.serve.server import serve

        serve(args.artifact, settings, load_options, access_log=args.access_log, root_path=root_path(args.root_path))
        return 0
    if args.access_log or args.root_path or args.allowed_hosts:
        raise SdoptError("--access-log, --root-path and --allowed-hosts are for one process under uvicorn, not --ray (Ray Serve keeps its own request "
                         "logs, under the Ray session's logs/serve/)")
    from sdopt.cluster.serve import Scaling, parse_autoscale, serve_on_ray
    from sdopt.source import resolve

    scaling = Scaling(replicas=args.replicas, autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
                      cpus_per_replica=1.0 if args.cpus_per_replica is None else args.cpus_per_replica,
                      gpus_per_replica=args.gpus_per_replica or 0.0)
    serve_on_ray(str(resolve(args.artifact)), settings, load_options, scaling, args.ray or None)
    return 0


def root_path(value: str | None) -> str:
    """--root-path as uvicorn takes it: "/sd" for "sd", "/sd/" or "/sd"; "" for none."""
    if not value or value.strip("/") == "":
        return ""
    if any(c in value for c in "?#% ") or "//" in value.strip("/"):
        raise SdoptError(f"--root-path {value!r}: give the path prefix the proxy serves this server under, such as /sd")
    return "/" + value.strip("/")


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve an artifact over HTTP: AUTOMATIC1111 and OpenAI APIs, jobs with progress and cancel, a web page")
    p.add_argument("artifact", type=user_path, help="artifact folder, Diffusers model folder, or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--allowed-hosts", default=None, metavar="NAME[,NAME...]",
                   help="names besides localhost/127.0.0.1 that requests may address this server by (their Host and Origin headers), "
                        "such as the name of a reverse proxy on this machine that passes it on; * for any. A server on loopback "
                        "refuses others (403: a web page cannot reach it by DNS rebinding); one bound beyond it checks only when given")
    p.add_argument("--port", type=int, default=7860, help="default 7860, as AUTOMATIC1111")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (default: env SDOPT_API_KEY)")
    p.add_argument("--api-auth", default=None, metavar="USER:PASS", help="require HTTP Basic credentials (as AUTOMATIC1111's --api-auth)")
    p.add_argument("--max-queue", type=int, default=64, help="jobs that may wait; one more gets 429 (default 64)")
    p.add_argument("--max-batch", type=int, default=4, help="images in one generate call, across requests (default 4)")
    p.add_argument("--job-timeout", type=float, default=600.0, help="seconds from submission to result; inf: no timeout (default 600)")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest width x height (default 1048576)")
    p.add_argument("--max-steps", type=int, default=150, help="most denoising steps a request may ask (default 150)")
    p.add_argument("--steps", type=int, default=None, help="steps of a request that does not say: every OpenAI request, a native one without steps, "
                   "the page (default: the model's, as `sdopt inspect` shows them: what export --default-steps recorded, 4 for an LCM UNet, "
                   "else 20; a Turbo model: 1). AUTOMATIC1111's API keeps its own default, 50")
    p.add_argument("--guidance", "--guidance-scale", type=float, default=None,
                   help="guidance scale of a request that does not say, as --steps (default: the model's: 8.5 for an LCM UNet, else 7.5; Turbo: 0)")
    p.add_argument("--scheduler", default=None, help="scheduler of a request that does not name one, as --steps (default: the model's own)")
    p.add_argument("--max-images", type=int, default=8, help="most images one request may ask (default 8)")
    # ServeSettings' own messages name these two; without them a server could not take a larger init image than 16 MiB.
    p.add_argument("--max-body-bytes", type=int, default=32 * 2**20,
                   help="largest request body, base64 images included; a larger one gets 413 (default 33554432, 32 MiB)")
    p.add_argument("--max-image-bytes", type=int, default=None,  # None: ServeSettings' 16 MiB (it checks one given against the body's)
                   help="largest input image (init image, mask, edit image) as a file, decoded from base64 (default 16777216, 16 MiB)")
    p.add_argument("--name", default=None, help="model name the APIs report (default: the artifact folder's name)")
    p.add_argument("--reshape", action="store_true",
                   help="openvino: let a static-shape artifact serve other sizes and batches too (each compiled on first use; "
                        "the built ones stay fastest)")
    p.add_argument("--deep-cache", nargs="?", type=int, const=1, default=None, metavar="N",
                   help="torch: load the UNet with its shallow branch, so requests may ask for step-feature caching (cache_interval); "
                        "N: the interval of requests that do not say (default 1: caching only when asked). Exported artifacts carry "
                        "theirs (export --deep-cache)")
    p.add_argument("--embeddings-dir", type=user_path, default=None, metavar="DIR",
                   help="textual inversion embeddings (DIR/WORD.safetensors) prompts use by WORD, as AUTOMATIC1111's embeddings folder: "
                        "loaded on the torch backend, those fused at export elsewhere; the others are listed as skipped (docs/serve.md)")
    p.add_argument("--lora-dir", type=user_path, default=None, metavar="DIR",
                   help="LoRAs (DIR/NAME.safetensors) a prompt may apply as <lora:NAME:WEIGHT>, AUTOMATIC1111's syntax (torch backend; docs/serve.md)")
    p.add_argument("--image-dir", default=None, type=user_path, metavar="DIR",
                   help="keep the images of OpenAI response_format=url answers in DIR (made if absent), with the links' signing key, "
                        "so a link works its whole 60 minutes, across restarts (default: in memory, the newest 64 jobs', until a restart)")
    p.add_argument("--root-path", default=None, metavar="PREFIX",
                   help="the path prefix a reverse proxy serves this server under and strips (/sd for https://host/sd/): "
                        "OpenAI's image links and /docs then carry it (docs/serve.md, behind a reverse proxy)")
    p.add_argument("--access-log", action="store_true",
                   help="a line per request on stdout (client, method and path, status), as uvicorn writes it; default: none, warnings and errors only, on stderr")
    add_load_flags(p)
    add_threads_flag(p)
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="serve through Ray Serve: replicas behind one endpoint, on the cluster at ADDRESS or a local one (docs/ray.md)")
    p.add_argument("--replicas", type=int, default=None, help="with --ray: replicas, each loading the artifact once (default 1)")
    p.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="with --ray: let Ray Serve's autoscaler keep MIN to MAX replicas")
    p.add_argument("--cpus-per-replica", type=float, default=None, help="with --ray: CPUs each replica holds (default 1; Ray sets torch's thread count to it, ONNX Runtime and OpenVINO use every core)")
    p.add_argument("--gpus-per-replica", type=float, default=None, help="with --ray: GPUs each replica holds (default 0; 1 with --device cuda is usual)")
    p.set_defaults(func=_serve)
