"""Build every artifact a hardware profile lists from one checkpoint, then bench them in one run.

    python bench/run_profile.py --profile cpu-generic --model /tmp/sd15 --work /tmp/sd15-artifacts \
        -o reports/cpu-generic/sd15 [--steps 4 --height 256 --width 256]

Artifacts that already exist under --work are reused (delete them to rebuild).
An artifact that cannot be built (a missing backend, an unsupported scheme)
is reported and left out; the others are still measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdopt.bench.profiles import load_profile
from sdopt.bench.runner import BenchSettings, run_bench
from sdopt.errors import SdoptError
from sdopt.prompts import read_prompts


def build(spec: dict, model: Path, work: Path, settings: BenchSettings, built: dict[str, str]) -> str:
    """The path (or PATH@precision) that benches this profile artifact, building it if needed.

    A quantize recipe starts from the checkpoint, or with ``from = "NAME"`` from an artifact
    listed before it (an OpenVINO export for ``backend = "nncf"``)."""
    if "export" not in spec and "quantize" not in spec:
        precision = spec.get("precision", "fp32")
        return str(model) if precision == "fp32" else f"{model}@{precision}"
    out = work / spec["name"]
    if (out / "sdopt.json").is_file():
        return str(out)
    if "export" in spec:
        from sdopt.export.run import export

        options = dict(spec.get("options", {}))
        if spec.get("static"):
            options.update(height=settings.height, width=settings.width, batch=1)
        export(model, spec["export"], out, precision=spec.get("precision", "fp32"), **options)
    else:
        from sdopt.quant.run import quantize

        if spec.get("from") and spec["from"] not in built:
            raise SdoptError(f"{spec['name']} quantizes {spec['from']}, which was not built (list it before, and check it built)")
        source = Path(built[spec["from"]]) if spec.get("from") else model
        quantize(source, spec["quantize"], out, backend=spec.get("backend"), device=settings.device)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--seeds")
    parser.add_argument("--prompts", help="prompt file (one per line); default: the profile's")
    parser.add_argument("--max-seconds", type=float, help="per-artifact time budget for the measured passes")
    parser.add_argument("--only", help="comma-separated artifact names to include")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    settings = BenchSettings.resolve(profile, steps=args.steps, height=args.height, width=args.width, runs=args.runs, seeds=seeds,
                                   max_seconds=args.max_seconds, prompts=read_prompts(args.prompts) if args.prompts else None)
    args.work.mkdir(parents=True, exist_ok=True)
    specs = [s for s in profile.artifacts if not args.only or s["name"] in args.only.split(",")]
    reference = next((s for s in specs if s.get("reference")), None)
    if reference is None:
        raise SystemExit("the profile marks no artifact as reference = true")
    paths, skipped = {}, {}
    for spec in specs:
        try:
            print(f"== {spec['name']}", file=sys.stderr)
            paths[spec["name"]] = build(spec, args.model, args.work, settings, paths)
        except SdoptError as exc:
            skipped[spec["name"]] = str(exc)
            print(f"   skipped: {exc}", file=sys.stderr)
    others = [p for n, p in paths.items() if n != reference["name"]]
    report = run_bench(others, paths[reference["name"]], args.output, settings, profile=profile)
    for name, why in skipped.items():
        print(f"not built: {name}: {why}", file=sys.stderr)
    print((args.output / "report.md").read_text())
    return 0 if all(a["status"] == "ok" for a in report["artifacts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
