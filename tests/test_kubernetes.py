"""deploy/kubernetes/: every manifest valid offline, and in step with the code and the Dockerfile.

The Kubernetes objects are validated with kubernetes-validate (it bundles the API's JSON
schemas, so no network is needed) in strict mode, which refuses unknown fields. KEDA's two
kinds are not in those schemas; they are checked against the required fields and types of
KEDA's CRDs, written out below. Then what the manifests say is compared with what the code
does: the image, commands, env names and values, the metrics/health port and paths (served
by the real metrics server), the user and the writable paths of the Dockerfile, the Secrets
referenced, and the queue the ScaledObject watches.
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from serq.settings import Settings
from serq.worker.services.metrics import Metrics, serve

from helpers.dockerfile import stages as _stages

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "deploy" / "kubernetes"
#: The oldest Kubernetes the manifests are meant for, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NAMESPACE = "serq"
#: What deploy/kubernetes/ must hold (kind, name): a missing or unparsed file fails here, not silently.
EXPECTED = {
    ("Namespace", "serq"), ("PersistentVolumeClaim", "serq-models"), ("PersistentVolumeClaim", "serq-data"),
    ("Deployment", "serq-worker"), ("PodDisruptionBudget", "serq-worker"), ("Deployment", "serq-trainer"),
    ("TriggerAuthentication", "serq-keda-rabbitmq"), ("ScaledObject", "serq-worker"),
    ("Secret", "serq-worker-broker"), ("Secret", "serq-trainer-broker"), ("Secret", "serq-keda-broker"),
    ("Secret", "serq-signing-key"), ("Secret", "serq-trusted-keys"), ("Secret", "serq-state-key"),
}
SETTINGS = {f"SERQ_{name.upper()}" for name in Settings.model_fields}


def load_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


@pytest.fixture(scope="module")
def docs() -> list[tuple[Path, dict]]:
    return load_documents()


@pytest.fixture(scope="module")
def objects(docs) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in docs}


def is_keda(doc: dict) -> bool:
    return doc["apiVersion"].startswith("keda.sh/")


def container(objects, deployment: str) -> dict:
    (only,) = objects[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def literal_env(c: dict) -> dict[str, str]:
    return {name: e["value"] for name, e in env_of(c).items() if "value" in e}


# ------------------------------------------------------------------ schemas


def test_the_manifests_hold_the_expected_objects_in_one_namespace(docs, objects):
    assert set(objects) == EXPECTED
    assert len(docs) == len(EXPECTED), "a (kind, name) appears twice"
    for (kind, name), doc in objects.items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{kind}/{name}"


def test_every_kubernetes_object_validates_against_the_api_schemas(docs):
    checked = []
    for path, doc in docs:
        if is_keda(doc):
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} against {version}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")
        checked.append(doc["kind"])
    assert len(checked) == len([k for k in EXPECTED if k[0] not in {"ScaledObject", "TriggerAuthentication"}])


def _worker_deployment() -> dict:
    return next(doc for _, doc in load_documents() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "serq-worker")


@pytest.mark.parametrize("breakage", ["probe field typo", "port as a string", "unknown top-level field"])
def test_the_schema_validation_can_fail(breakage):
    doc = _worker_deployment()
    c = doc["spec"]["template"]["spec"]["containers"][0]
    if breakage == "probe field typo":
        c["readinessProbe"]["periodSecond"] = 5
    elif breakage == "port as a string":
        c["ports"][0]["containerPort"] = "9108"
    else:
        doc["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# KEDA's CRDs (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml, v1alpha1): their
# required fields, and the types of every field serq's manifests use. Unlike the API server,
# which prunes unknown fields of a CRD silently (a typo would vanish), unknown fields fail here.
_INT = {"type": "integer"}
_STR = {"type": "string"}
_REF = {"type": "object", "required": ["name"], "properties": {"name": _STR, "kind": _STR}, "additionalProperties": False}
_POLICY = {"type": "object", "required": ["type", "value", "periodSeconds"], "additionalProperties": False,
           "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": _INT, "periodSeconds": _INT}}
_RULES = {"type": "object", "additionalProperties": False,
          "properties": {"stabilizationWindowSeconds": _INT, "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
                         "policies": {"type": "array", "items": _POLICY}}}
_META = {"type": "object", "required": ["name", "namespace"], "properties": {"name": _STR, "namespace": _STR}}
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"}, "metadata": _META,
            "spec": {
                "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                       "properties": {"name": _STR, "kind": _STR, "apiVersion": _STR,
                                                      "envSourceContainerName": _STR}},
                    "pollingInterval": _INT, "cooldownPeriod": _INT, "idleReplicaCount": _INT,
                    "minReplicaCount": _INT, "maxReplicaCount": _INT,
                    "fallback": {"type": "object", "required": ["failureThreshold", "replicas"],
                                 "additionalProperties": False,
                                 "properties": {"failureThreshold": _INT, "replicas": _INT}},
                    "advanced": {"type": "object", "additionalProperties": False, "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                            "name": _STR,
                            "behavior": {"type": "object", "additionalProperties": False,
                                         "properties": {"scaleUp": _RULES, "scaleDown": _RULES}}}}}},
                    "triggers": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                        "properties": {
                            "type": _STR, "name": _STR, "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            # Every metadata value is a string in the CRD: `value: 10` is refused.
                            "metadata": {"type": "object", "additionalProperties": _STR},
                            "authenticationRef": _REF}}},
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"}, "metadata": _META,
            "spec": {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
                "secretTargetRef": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                    "properties": {"parameter": _STR, "name": _STR, "key": _STR}}}}},
        },
    },
}
#: KEDA's rabbitmq scaler: its metadata keys (keda.sh/docs/2.18/scalers/rabbitmq-queue) and modes.
RABBITMQ_METADATA = {"host", "protocol", "mode", "value", "activationValue", "queueName", "vhostName",
                     "hostFromEnv", "usernameFromEnv", "passwordFromEnv", "unsafeSsl", "timeout",
                     "excludeUnacknowledged", "useRegex", "pageSize", "operation"}
RABBITMQ_MODES = {"QueueLength", "MessageRate", "DeliverGetRate", "PublishedToDeliveredRatio",
                  "ExpectedQueueConsumptionTime"}


def keda_problems(doc: dict) -> list[str]:
    """What is wrong with a KEDA resource: schema errors, then the rabbitmq trigger's own rules."""
    validator = jsonschema.Draft202012Validator(KEDA_SCHEMAS[doc["kind"]])
    problems = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    if problems or doc["kind"] != "ScaledObject":
        return problems
    for trigger in doc["spec"]["triggers"]:
        if trigger["type"] != "rabbitmq":
            continue
        meta = trigger["metadata"]
        problems += [f"unknown rabbitmq metadata {k!r}" for k in sorted(set(meta) - RABBITMQ_METADATA)]
        if "queueName" not in meta:
            problems.append("rabbitmq trigger without queueName")
        if meta.get("mode") not in RABBITMQ_MODES:
            problems.append(f"mode {meta.get('mode')!r} is not one of {sorted(RABBITMQ_MODES)}")
        try:
            if float(meta.get("value", "")) <= 0:
                problems.append("value must be positive")
        except ValueError:
            problems.append(f"value {meta.get('value')!r} is not a number")
        if not ({"host", "hostFromEnv"} & set(meta) or "authenticationRef" in trigger):
            problems.append("no host: neither metadata host/hostFromEnv nor an authenticationRef")
    return problems


def test_keda_resources_match_their_crds(docs):
    keda = [doc for _, doc in docs if is_keda(doc)]
    assert sorted(d["kind"] for d in keda) == ["ScaledObject", "TriggerAuthentication"]
    for doc in keda:
        assert keda_problems(doc) == [], doc["kind"]


@pytest.mark.parametrize("breakage", ["no scaleTargetRef", "number as metadata value", "misspelt field",
                                      "unknown mode", "secret ref without key"])
def test_the_keda_check_can_fail(objects, breakage):
    so = json.loads(json.dumps(objects[("ScaledObject", "serq-worker")]))
    auth = json.loads(json.dumps(objects[("TriggerAuthentication", "serq-keda-rabbitmq")]))
    doc = so
    if breakage == "no scaleTargetRef":
        del so["spec"]["scaleTargetRef"]
    elif breakage == "number as metadata value":
        so["spec"]["triggers"][0]["metadata"]["value"] = 10
    elif breakage == "misspelt field":
        so["spec"]["pollingIntervall"] = 5
    elif breakage == "unknown mode":
        so["spec"]["triggers"][0]["metadata"]["mode"] = "QueueDepth"
    else:
        del auth["spec"]["secretTargetRef"][0]["key"]
        doc = auth
    assert keda_problems(doc)


# ------------------------------------------------------------------ in step with the code


def test_the_image_is_the_compose_image_at_the_package_version(objects):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    repo = compose["services"]["worker"]["image"].split(":")[0]
    for name in ("serq-worker", "serq-trainer"):
        assert container(objects, name)["image"] == f"{repo}:{version}", name


def test_the_commands_are_serq_subcommands_as_in_compose(objects):
    from serq.cli import build_parser

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for deployment, service in (("serq-worker", "worker"), ("serq-trainer", "trainer")):
        command = container(objects, deployment)["command"]
        assert command == compose["services"][service]["command"]
        assert command[0] == "serq" and command[1] in sub.choices


def test_every_serq_env_name_is_a_setting(objects):
    seen = set()
    for name in ("serq-worker", "serq-trainer"):
        names = {n for n in env_of(container(objects, name)) if n.startswith("SERQ_")}
        assert names - SETTINGS == set(), name
        seen |= names
    assert {"SERQ_AMQP_URL", "SERQ_PREFIX", "SERQ_MODEL_DIR", "SERQ_METRICS_PORT", "SERQ_DATA_ROOTS"} <= seen


@pytest.mark.parametrize("deployment", ["serq-worker", "serq-trainer"])
def test_the_env_values_are_accepted_by_the_settings(objects, deployment, monkeypatch):
    for name in list(os.environ):
        if name.startswith("SERQ_"):
            monkeypatch.delenv(name)
    values = {k: v for k, v in literal_env(container(objects, deployment)).items()}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises on a value the code refuses
    for name, value in values.items():
        read = getattr(settings, name.removeprefix("SERQ_").lower())
        if isinstance(read, (str, int, float, bool, Path)):  # read as given, not ignored
            assert str(read).lower() == value.lower(), name


def test_the_metrics_port_and_probes_are_the_workers(objects):
    c = container(objects, "serq-worker")
    (port,) = c["ports"]
    annotations = objects[("Deployment", "serq-worker")]["spec"]["template"]["metadata"]["annotations"]
    assert port["containerPort"] == Settings.model_fields["metrics_port"].default
    assert literal_env(c)["SERQ_METRICS_PORT"] == str(port["containerPort"]) == annotations["prometheus.io/port"]
    probes = [c[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    for probe in probes:
        assert probe["httpGet"]["port"] in (port["name"], port["containerPort"])
    # The paths against the worker's real metrics server: /healthz says 503 until the worker
    # consumes, then 200; the scrape path serves the worker's metrics.
    metrics = Metrics()
    server = serve(metrics, 0, host="127.0.0.1")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for probe in probes:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + probe["httpGet"]["path"], timeout=5)
            assert refused.value.code == 503
        metrics.set_connected(True)
        for probe in probes:
            with urllib.request.urlopen(base + probe["httpGet"]["path"], timeout=5) as resp:
                assert resp.status == 200
        with urllib.request.urlopen(base + annotations["prometheus.io/path"], timeout=5) as resp:
            assert b"serq_requests_total" in resp.read()
    finally:
        server.shutdown()


def _dockerfile_runtime() -> list[str]:
    runtime = _stages()[-1]
    assert len(runtime) > 5, "the Dockerfile's runtime stage was not parsed"
    return runtime


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instr in _dockerfile_runtime():
        if instr.upper().startswith("ENV "):
            for pair in instr.split(None, 1)[1].split():
                key, _, value = pair.partition("=")
                env[key] = value
    assert env, "no ENV parsed from the Dockerfile"
    return env


def _mounts(pod: dict, c: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (mount, volume)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in c["volumeMounts"]}


def _under(path: str, mounts: dict) -> tuple[dict, dict] | None:
    best = max((p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")), key=len, default=None)
    return mounts[best] if best else None


@pytest.mark.parametrize("deployment", ["serq-worker", "serq-trainer"])
def test_the_pod_runs_as_the_images_user_and_its_writable_paths_are_mounted(objects, deployment):
    runtime = "\n".join(_dockerfile_runtime())
    uid = int(runtime.split("--uid", 1)[1].split()[0])
    image_env = _dockerfile_env()
    pod = objects[("Deployment", deployment)]["spec"]["template"]["spec"]
    c = container(objects, deployment)
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = literal_env(c)
    mounts = _mounts(pod, c)
    # The image's registry path is the one mounted, and the code reads it from SERQ_MODEL_DIR.
    assert env["SERQ_MODEL_DIR"] == image_env["SERQ_MODEL_DIR"] == "/models"
    models = mounts["/models"]
    assert models[1]["persistentVolumeClaim"]["claimName"] == "serq-models"
    assert models[0].get("readOnly", False) is (deployment == "serq-worker"), "only the trainer writes the registry"
    # With a read-only root, every place the image or the settings write to is a mounted volume.
    writable = [image_env["NUMBA_CACHE_DIR"]]
    if deployment == "serq-trainer":
        writable += [env["SERQ_CACHE_DIR"]]
        data = mounts[env["SERQ_DATA_ROOTS"]]
        assert data[0]["readOnly"] is True and data[1]["persistentVolumeClaim"]["readOnly"] is True
    for path in writable:
        found = _under(path, mounts)
        assert found and not found[0].get("readOnly", False), f"{path} is not on a writable volume"


def test_every_secret_referenced_exists_with_that_key(objects):
    secrets = {name: set(doc.get("stringData", {})) | set(doc.get("data", {}))
               for (kind, name), doc in objects.items() if kind == "Secret"}
    refs = []
    for deployment in ("serq-worker", "serq-trainer"):
        pod = objects[("Deployment", deployment)]["spec"]["template"]["spec"]
        c = container(objects, deployment)
        refs += [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                 for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        # A key file named in the env (SERQ_SIGNING_KEY, SERQ_TRUSTED_KEYS) lies in a mounted Secret.
        mounts = _mounts(pod, c)
        for name in ("SERQ_SIGNING_KEY", "SERQ_TRUSTED_KEYS"):
            for path in filter(None, literal_env(c).get(name, "").split(":")):
                mount, volume = _under(path, mounts)
                assert "secret" in volume, f"{name}={path} is not in a Secret volume"
                refs.append((volume["secret"]["secretName"], Path(path).name))
    auth = objects[("TriggerAuthentication", "serq-keda-rabbitmq")]["spec"]["secretTargetRef"]
    refs += [(r["name"], r["key"]) for r in auth]
    assert {name for name, _ in refs} == set(secrets), "a Secret is defined but never used, or used but not defined"
    for name, key in refs:
        assert key in secrets[name], f"Secret {name} has no key {key}"
    # The private key is the trainer's alone.
    worker_pod = objects[("Deployment", "serq-worker")]["spec"]["template"]["spec"]
    assert "serq-signing-key" not in json.dumps(worker_pod)


def test_the_scaledobject_scales_the_workers_on_their_classify_queue(objects):
    so = objects[("ScaledObject", "serq-worker")]["spec"]
    worker = objects[("Deployment", "serq-worker")]
    env = literal_env(container(objects, "serq-worker"))
    assert so["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"], "the HPA owns the worker count; re-applying must not reset it"
    (trigger,) = so["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength"
    assert meta["queueName"] == Settings(prefix=env["SERQ_PREFIX"]).name("classify")
    # Unacknowledged messages count (the http protocol), and the target exceeds a worker's
    # prefetch, so part of a backlog waits in the queue for new workers (40-keda.yaml explains).
    assert meta["protocol"] == "http" and meta.get("excludeUnacknowledged", "false") == "false"
    assert float(meta["value"]) > int(env["SERQ_PREFETCH"])
    assert 1 <= so["minReplicaCount"] <= so["fallback"]["replicas"] <= so["maxReplicaCount"]


def test_selectors_match_their_pods(objects):
    for name in ("serq-worker", "serq-trainer"):
        spec = objects[("Deployment", name)]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
    pdb = objects[("PodDisruptionBudget", "serq-worker")]["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= objects[("Deployment", "serq-worker")]["spec"]["template"]["metadata"]["labels"].items()
    claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
    for name in ("serq-worker", "serq-trainer"):
        for volume in objects[("Deployment", name)]["spec"]["template"]["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
