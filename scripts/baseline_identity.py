"""Record in a bench report written before reports carried identities (sdopt.manifest.identity_of) the identity of
the model it measured, from that model's files, so `sdopt gate` compares it with later runs blind to the library
versions that wrote the model's configs.

    python scripts/baseline_identity.py reports/ci/baselines/KIND.json MODEL_FOLDER

MODEL_FOLDER must hold the very files the report measured: their fingerprint must be the report's model.fingerprint
(for the CI baselines: `sdopt init-model tiny DIR --seed 0` under the Transformers and Diffusers versions the report's
machine.libraries names). Anything else is refused and the report is left as it was. Only the report's reference must
be that model (the CI bench's is): its row's identity is recorded too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    from sdopt.errors import SdoptError
    from sdopt.manifest import fingerprint_of, identity_of, read_manifest

    report_path, model = Path(argv[0]), Path(argv[1])
    report = json.loads(report_path.read_text())
    try:
        manifest = read_manifest(model)
    except SdoptError as e:
        print(f"baseline_identity: {e}", file=sys.stderr)
        return 2
    fingerprint = fingerprint_of(manifest.components)
    wanted = report.get("model", {}).get("fingerprint")
    if fingerprint != wanted:
        print(f"baseline_identity: {model} is not the model {report_path} measured (fingerprint {fingerprint[:12]}, the report's "
              f"{str(wanted)[:12]}): write it with the library versions the report's machine.libraries names", file=sys.stderr)
        return 1
    reference = next(a for a in report["artifacts"] if a["name"] == report["reference"])
    if reference.get("artifact_id") != fingerprint[:12]:
        print(f"baseline_identity: the report's reference {report['reference']!r} is not that checkpoint itself "
              f"(artifact {reference.get('artifact_id')}): bench again instead", file=sys.stderr)
        return 1
    identity = identity_of(manifest.components, model)
    report["model"]["identity"] = reference["identity"] = identity
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(report_path)
    print(f"{report_path}: model identity {identity[:12]} recorded (fingerprint {fingerprint[:12]} matched)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
