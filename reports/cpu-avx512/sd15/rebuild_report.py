"""Rebuild reports/cpu-avx512/sd15 from its workers' raw results with the fixed probe precision.

The OpenVINO rows' compute precision (fp32: the CPU has no bf16) is what the workers would
now report; the bench that produced these raws predates the compute_precision field.
"""
import json, sys
from pathlib import Path
from sdopt.bench.profiles import load_profile
from sdopt.bench.runner import BenchSettings, assemble_report, collect, check_static_shapes
from sdopt.prompts import read_prompts

out = Path("reports/cpu-avx512/sd15")
old = json.loads((out / "report.json").read_text())
profile = load_profile("cpu-avx512")
settings = BenchSettings.resolve(profile, prompts=old["request"]["prompts"], seeds=old["request"]["seeds"], runs=old["settings"]["runs"], max_seconds=old["settings"]["max_seconds"])
ref = next(a for a in old["artifacts"] if a["name"] == old["reference"])
others = [a["path"] for a in old["artifacts"] if a["name"] != old["reference"]]
entries = collect(others, ref["path"])
raws = {}
for e, a in zip(entries, [ref] + [a for a in old["artifacts"] if a["name"] != old["reference"]]):
    raw = json.loads((out / a["work_dir"] / "result.json").read_text())
    raw["work_dir"] = a["work_dir"]
    if e.manifest.backend == "openvino" and "compute_precision" not in raw:
        runs = e.manifest.export.get("validated_on", {}).get("runs", {}).get("unet")
        raw["compute_precision"] = runs or "fp32"  # docs/measurements/openvino_sd15.json: openvino_runs int8_static fp32
    raws[e.name] = raw
    print(e.name, raw.get("compute_precision"))
report = assemble_report(entries, raws, settings, out, profile)
print((out / "report.md").read_text())
