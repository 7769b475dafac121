"""Turn one version of a CustomResourceDefinition into a strict JSON Schema, the way
kubernetes-validate's `--strict` schemas are built (an object with declared properties
admits no other key), so a misspelt field of a custom resource fails the check too.

    .venv/bin/python scripts/crd_to_json_schema.py CRD.yaml VERSION SOURCE > schema.json

SOURCE is recorded in the schema's $comment (where the CRD came from). Kubernetes' CEL
rules (x-kubernetes-validations) are not JSON Schema and are not checked; the tests in
tests/unit/test_deploy_manifests.py cover the ones paystream's manifests depend on.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def strict(node: Any) -> Any:
    """A copy of `node` where every object schema with properties forbids other keys."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def crd_schema(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    spec = crd["spec"]
    served = [v for v in spec["versions"] if v["name"] == version]
    if not served:
        raise SystemExit(f"{crd['metadata']['name']} has no version {version}")
    schema = strict(served[0]["schema"]["openAPIV3Schema"])
    api_version = f"{spec['group']}/{version}"
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"{api_version} {spec['names']['kind']}, made strict from {source} "
        "by scripts/crd_to_json_schema.py",
        **schema,
    }


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        raise SystemExit(__doc__)
    _, path, version, source = argv
    with open(path, encoding="utf-8") as crd_file:
        crd = yaml.safe_load(crd_file)
    json.dump(crd_schema(crd, version, source), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
