#!/usr/bin/env bash
# `make check-deploy`: the deployment files are what a cluster and Docker Compose accept.
#   1. every kustomization under deploy/k8s (the base and each overlay) renders with
#      `kubectl kustomize` (kubectl's built-in kustomize; no cluster is contacted);
#   2. every rendered Kubernetes object validates with `kubernetes-validate --strict`
#      (unknown fields fail), and a kind it has no schema for fails too, instead of the
#      warning kubernetes-validate prints;
#   3. the rule for custom resources: kubernetes-validate knows only Kubernetes' own kinds,
#      so each KEDA ScaledObject is split out and checked with check-jsonschema against the
#      vendored, strict deploy/k8s/schemas/keda.sh-scaledobject-v1alpha1.json (regenerate it
#      from a KEDA release's CRD with scripts/crd_to_json_schema.py);
#   4. docker-compose.yml validates against the compose-spec JSON Schema.
# Usage: scripts/check_deploy.sh [ROOT]  (ROOT: the repository to check; default this one).
# Tools: kubectl on PATH; kubernetes-validate and check-jsonschema from this repository's
# .venv (dev dependencies). Every step runs; the exit code is 1 if any failed.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "${1:-$here}" && pwd)
venv=$here/.venv/bin
schema=$root/deploy/k8s/schemas/keda.sh-scaledobject-v1alpha1.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
fail() { echo "check-deploy: FAILED: $*" >&2; status=1; }

command -v kubectl >/dev/null || fail "kubectl is not on PATH (it renders the kustomizations)"
kustomizations=$(cd "$root/deploy/k8s" && find . -name kustomization.yaml -printf '%h\n' | sort)
[ -n "$kustomizations" ] || fail "no kustomization.yaml under deploy/k8s"
for dir in $kustomizations; do
    dir=${dir#./}
    name=${dir//\//-}
    echo "== deploy/k8s/$dir"
    if ! kubectl kustomize "$root/deploy/k8s/$dir" >"$tmp/$name.yaml"; then
        fail "kubectl kustomize deploy/k8s/$dir"
        continue
    fi
    # Split the KEDA ScaledObjects (one file each: check-jsonschema reads one document per
    # file) from the Kubernetes objects.
    if ! "$venv/python" - "$tmp/$name.yaml" "$tmp/$name" <<'PY'
import sys
import yaml
rendered, prefix = sys.argv[1], sys.argv[2]
with open(rendered, encoding="utf-8") as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
keda = [(d["apiVersion"], d["kind"]) == ("keda.sh/v1alpha1", "ScaledObject") for d in docs]
with open(f"{prefix}.k8s.yaml", "w", encoding="utf-8") as out:
    yaml.safe_dump_all([d for d, k in zip(docs, keda) if not k], out)
for i, d in enumerate(d for d, k in zip(docs, keda) if k):
    with open(f"{prefix}.scaledobject-{i}.yaml", "w", encoding="utf-8") as out:
        yaml.safe_dump(d, out)
print(f"{keda.count(False)} Kubernetes objects, {keda.count(True)} ScaledObjects")
PY
    then
        fail "reading the rendered deploy/k8s/$dir"
        continue
    fi
    # --quiet prints only problems; a WARN is a kind without a schema (a typo in a kind or
    # an apiVersion, or a custom resource without the rule above): fail on it as well.
    report=$("$venv/kubernetes-validate" --strict --quiet "$tmp/$name.k8s.yaml" 2>&1)
    rc=$?
    [ -z "$report" ] || echo "$report"
    if [ "$rc" -ne 0 ] || grep -q WARN <<<"$report"; then
        fail "kubernetes-validate --strict deploy/k8s/$dir"
    fi
    objects=("$tmp/$name".scaledobject-*.yaml)
    if [ -e "${objects[0]}" ]; then
        "$venv/check-jsonschema" --schemafile "$schema" "${objects[@]}" ||
            fail "ScaledObjects of deploy/k8s/$dir against $(basename "$schema")"
    fi
done

echo "== docker-compose.yml"
"$venv/check-jsonschema" --builtin-schema vendor.compose-spec "$root/docker-compose.yml" ||
    fail "docker-compose.yml against the compose-spec schema"

[ "$status" -eq 0 ] && echo "check-deploy: all passed"
exit "$status"
