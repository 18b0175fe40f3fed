"""docker/k8s: parsed with PyYAML and checked for what makes a rollout safe.

No schema-aware validator (kubeconform, kubeval) is packaged by Debian, so this
asserts the fields that matter: probes on the right paths and port, a grace
period above the shutdown delay plus the drain, CPU requests/limits equal to
the worker count, labels and names that tie the objects together, the image's
non-root user, and ConfigMap variables that name real flags of the binary.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"


def load(name):
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert len(docs) == 1, name
    return docs[0]


@pytest.fixture(scope="module")
def objects():
    kustomization = load("kustomization.yaml")
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    by_kind = {}
    for name in files:
        doc = load(name)
        assert doc["metadata"]["name"].startswith("gilgamesh"), name
        by_kind[doc["kind"]] = doc
    assert set(by_kind) >= {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"}
    return by_kind


def container_of(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flags(objects):
    """The server's settings as the pod gets them: ConfigMap variables, then args."""
    values = {k: v for k, v in objects["ConfigMap"]["data"].items()}
    args = container_of(objects["Deployment"]).get("args", [])
    for flag, value in zip(args[::2], args[1::2]):
        values["GILGAMESH_" + flag.lstrip("-").upper().replace("-", "_")] = value
    return values


def test_probes(objects):
    c = container_of(objects["Deployment"])
    port = next(p for p in c["ports"] if p["name"] == "http")
    assert port["containerPort"] == int(flags(objects)["GILGAMESH_PORT"]) == 8080
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Liveness gives a busy server several periods before a restart.
    assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 20


def test_grace_period_covers_delay_and_drain(objects):
    f = flags(objects)
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    delay = float(f["GILGAMESH_SHUTDOWN_DELAY"])
    drain = float(f["GILGAMESH_GRACEFUL_TIMEOUT"])
    assert delay > 0
    # The endpoint must leave the Service (readiness fails within one period) before the listener closes.
    readiness = container_of(objects["Deployment"])["readinessProbe"]
    assert delay >= readiness["periodSeconds"] * readiness["failureThreshold"]
    assert spec["terminationGracePeriodSeconds"] > delay + drain


def test_cpu_matches_workers(objects):
    resources = container_of(objects["Deployment"])["resources"]
    workers = int(flags(objects)["GILGAMESH_WORKERS"])
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == str(workers)


def test_names_and_labels_tie_together(objects):
    deployment, service, hpa = objects["Deployment"], objects["Service"], objects["HorizontalPodAutoscaler"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    refs = [e["configMapRef"]["name"] for e in container_of(deployment)["envFrom"]]
    assert objects["ConfigMap"]["metadata"]["name"] in refs
    if "PodDisruptionBudget" in objects:
        assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_runs_as_the_images_user(objects):
    user = re.search(r"^USER (\d+):(\d+)$", (REPO / "docker" / "Dockerfile").read_text(), flags=re.M)
    assert user, "docker/Dockerfile has no numeric USER"
    pod = objects["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == user.groups()
    c = container_of(objects["Deployment"])
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_config_names_real_flags(objects):
    binary = Path(os.environ.get("GILGAMESH_BIN") or REPO / "build" / "gilgamesh")
    if not binary.is_file():
        pytest.fail("gilgamesh binary not found at %s (build it, or set GILGAMESH_BIN)" % binary,
                    pytrace=False)
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30).stdout
    known = set(re.findall(r"(--[a-z][a-z-]+)", help_text))
    assert "--shutdown-delay" in known, help_text
    for key in flags(objects):
        assert key.startswith("GILGAMESH_"), key
        flag = "--" + key[len("GILGAMESH_"):].lower().replace("_", "-")
        assert flag in known, "%s (%s) is not a flag of %s" % (key, flag, binary)
