"""deploy/k8s, validated offline: every manifest against the Kubernetes 1.31 OpenAPI schemas (strict: unknown fields
fail), then the project's own consistency checks against `make serve`'s ports and GPU preset, deploy/ngc.env,
yolo_triton.serving.docker, the model repository a build generates and the prometheus-adapter rule. No cluster is needed (or exists here).

Each consistency check is a function returning a list of problems; ``MUTATIONS`` breaks the manifests one way at a
time and ``test_check_catches_breakage`` asserts the check reports it, so no check passes vacuously.
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from yolo_triton.serving import docker, security
from yolo_triton import specs
from yolo_triton.placement import PRESETS
from yolo_triton.repository import repository_files
from yolo_triton.serving.serve import PORTS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
MANUAL = "manual"  # applied by hand, never by kustomize (the admin Secret, the adapter's config)
CONTAINER = "tritonserver"

# (kind, metadata.name) → key in the manifests dict
EXPECTED = {
    ("Deployment", "yolo-triton"): "deployment",
    ("Service", "yolo-triton"): "service",
    ("HorizontalPodAutoscaler", "yolo-triton"): "hpa",
    ("PodDisruptionBudget", "yolo-triton"): "pdb",
    ("ConfigMap", "yolo-triton-config"): "config",
    ("Secret", "yolo-triton-admin"): "secret",
    ("ConfigMap", "prometheus-adapter"): "adapter",
}


def _documents(path: Path):
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _manifest_files():
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")


def load_manifests() -> dict:
    found = {"files": {}}
    for path in _manifest_files():
        relative = path.relative_to(K8S).as_posix()
        found["files"][relative] = []
        for doc in _documents(path):
            key = EXPECTED.get((doc["kind"], doc["metadata"]["name"]))
            assert key is not None, f"{relative}: unexpected {doc['kind']}/{doc['metadata']['name']} (add it to EXPECTED)"
            assert key not in found, f"{relative}: a second {doc['kind']}/{doc['metadata']['name']}"
            found[key] = doc
            found["files"][relative].append(key)
    missing = set(EXPECTED.values()) - set(found)
    assert not missing, f"manifests not found under deploy/k8s: {sorted(missing)}"
    found["kustomization"] = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    found["adapter_config"] = yaml.safe_load(found["adapter"]["data"]["config.yaml"])
    found["dockerfile_models"] = (K8S / "Dockerfile.models").read_text(encoding="utf-8")
    return found


@pytest.fixture(scope="module")
def manifests():
    return load_manifests()


# --- helpers -------------------------------------------------------------------------------------------------------



_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "m": 1e-3, "": 1}


def quantity(value) -> float:
    """A Kubernetes resource quantity ("16Gi", "500m", 4) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in _SUFFIX, f"not a quantity: {value!r}"
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def pod_spec(m):
    return m["deployment"]["spec"]["template"]["spec"]


def pod_labels(m):
    return m["deployment"]["spec"]["template"]["metadata"].get("labels", {})


def container(m):
    (found,) = [c for c in pod_spec(m)["containers"] if c["name"] == CONTAINER]
    return found


SUPERVISOR = ["python3", "-m", "yolo_triton.serving.supervise"]


def server_words(m) -> list:
    """The server's command line (command + args), after our supervisor's ``... --`` if it runs under it."""
    c = container(m)
    words = [*c.get("command", []), *c.get("args", [])]
    return words[words.index("--") + 1:] if words[:3] == SUPERVISOR and "--" in words else words


def server_flags(m) -> dict:
    """--flag=value of the tritonserver command line (command + args); the binary must be tritonserver."""
    words = server_words(m)
    assert words and words[0] == "tritonserver", f"the container does not run tritonserver: {words[:1]}"
    flags = {}
    for word in words[1:]:
        name, _, value = word.partition("=")
        assert name not in flags, f"flag given twice: {name}"
        flags[name] = value
    return flags


def env_var(m, name):
    found = [e for e in container(m).get("env", []) if e["name"] == name]
    return found[0] if found else None


def named_port(m, port) -> int:
    """A port number, or a container port's name resolved to its number."""
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in container(m).get("ports", []) if p.get("name") == port]
    return found[0] if found else -1


def _selector_problems(what, selector, labels):
    if not selector:
        return [f"{what}: empty selector (would select every pod)"]
    return [f"{what}: {k}={v} not among the pod labels {labels}" for k, v in selector.items() if labels.get(k) != v]


# what deploy/k8s/Dockerfile.models packs: `make build-engines RUNTIME=tensorrt` of the default models
K8S_PLACEMENT = PRESETS["cpu"].replace(runtime="tensorrt")


def repository_configs() -> dict:
    """{model name: config} of the repository the cluster serves, as the build generates it."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    configs = {}
    for name in specs.DEFAULT_MODELS:
        for relative, text in repository_files(specs.get_spec(name), K8S_PLACEMENT).items():
            if relative.endswith("/config.pbtxt"):
                configs[relative.split("/")[0]] = text_format.Parse(text, model_config_pb2.ModelConfig())
    return configs


def ensembles():
    """{ensemble name: [composing model names]} of the repository the cluster serves."""
    return {name: [step.model_name for step in config.ensemble_scheduling.step]
            for name, config in repository_configs().items() if config.platform == "ensemble"}


def queue_delay_us(model: str) -> int:
    config = repository_configs()[model]
    return config.dynamic_batching.max_queue_delay_microseconds if config.HasField("dynamic_batching") else 0


# --- the project's consistency checks ------------------------------------------------------------------------------

def check_ports(m):
    """Container ports, tritonserver flags, Service ports, probe ports and the scrape annotation = `make serve`'s."""
    wanted = PORTS
    problems = []
    container_ports = {p.get("name"): p["containerPort"] for p in container(m).get("ports", [])}
    service_ports = {p.get("name"): p for p in m["service"]["spec"]["ports"]}
    flags = server_flags(m)
    for name, number in wanted.items():
        if container_ports.get(name) != number:
            problems.append(f"container port {name}: {container_ports.get(name)} != make serve's {number}")
        if flags.get(f"--{name}-port") != str(number):
            problems.append(f"--{name}-port={flags.get(f'--{name}-port')} != make serve's {number}")
        service = service_ports.get(name)
        if service is None or service["port"] != number or named_port(m, service.get("targetPort", service["port"])) != number:
            problems.append(f"Service port {name}: {service} does not serve {number}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = container(m).get(probe, {}).get("httpGet", {}).get("port")
        if named_port(m, port) != wanted["http"]:
            problems.append(f"{probe} port {port} is not the HTTP port {wanted['http']}")
    annotations = m["deployment"]["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != str(wanted["metrics"]):
        problems.append(f"prometheus.io/port {annotations.get('prometheus.io/port')} != metrics port {wanted['metrics']}")
    return problems


def check_probes(m):
    """Triton's health endpoints; liveness never on readiness (a model not ready must not restart the pod); the
    startup budget covers minutes of model loading."""
    c, problems = container(m), []
    paths = {probe: c.get(probe, {}).get("httpGet", {}).get("path") for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    if paths["readinessProbe"] != "/v2/health/ready":
        problems.append(f"readinessProbe path {paths['readinessProbe']} != /v2/health/ready")
    if paths["livenessProbe"] != "/v2/health/live":
        problems.append(f"livenessProbe path {paths['livenessProbe']} != /v2/health/live")
    if paths["startupProbe"] not in ("/v2/health/live", "/v2/health/ready"):
        problems.append(f"startupProbe path {paths['startupProbe']} is not a Triton health endpoint")
    startup = c.get("startupProbe", {})
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < 600:
        problems.append(f"startupProbe allows {budget} s of model loading (< 10 minutes)")
    return problems


def check_image(m):
    """The image is the one yolo_triton.deploy builds (its tag is NGC_RELEASE of deploy/ngc.env), and
    Dockerfile.models layers the models on that same image."""
    tag, _ = docker.server_image()
    problems = []
    if not tag.endswith(":" + docker.ngc_versions()["NGC_RELEASE"]):
        problems.append(f"docker.server_image() {tag} is not tagged with NGC_RELEASE")
    if container(m)["image"] != tag:
        problems.append(f"Deployment image {container(m)['image']} != {tag} (yolo_triton.docker.server_image)")
    match = re.search(r"^ARG SERVER_IMAGE=(\S+)$", m["dockerfile_models"], re.M)
    if not match or match.group(1) != tag:
        problems.append(f"Dockerfile.models SERVER_IMAGE default {match and match.group(1)} != {tag}")
    return problems


def check_cuda_pool(m):
    """--cuda-memory-pool-byte-size = the GPU preset's pool on device 0, and the pod has exactly that one GPU."""
    wanted = f"0:{PRESETS['gpu'].cuda_pool_mib * 1048576}"
    problems = []
    if server_flags(m).get("--cuda-memory-pool-byte-size") != wanted:
        problems.append(f"--cuda-memory-pool-byte-size={server_flags(m).get('--cuda-memory-pool-byte-size')} != {wanted}")
    if str(container(m).get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
        problems.append("limits nvidia.com/gpu is not 1 (the pool is for GPU 0, the pod's only GPU)")
    return problems


def check_kustomization(m):
    """kustomization.yaml lists every top-level manifest and nothing else; manual/ is never applied by it."""
    k, problems = m["kustomization"], []
    if (k.get("apiVersion"), k.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        problems.append(f"kustomization apiVersion/kind: {k.get('apiVersion')}/{k.get('kind')}")
    resources = list(k.get("resources", []))
    top_level = {f for f in m["files"] if "/" not in f}
    if len(resources) != len(set(resources)):
        problems.append(f"kustomization lists a file twice: {resources}")
    for missing in sorted(top_level - set(resources)):
        problems.append(f"{missing} is in deploy/k8s but not in kustomization.yaml")
    for extra in sorted(set(resources) - top_level):
        why = "a manual/ file must not be applied by kustomize" if extra.startswith(MANUAL + "/") else "no such manifest"
        problems.append(f"kustomization.yaml lists {extra}: {why}")
    for key in ("secret", "adapter"):
        if not any(key in keys for f, keys in m["files"].items() if f.startswith(MANUAL + "/")):
            problems.append(f"the {key} manifest is not under {MANUAL}/ (kustomize would apply it)")
    return problems


def check_hpa_target(m):
    ref = m["hpa"]["spec"]["scaleTargetRef"]
    want = ("apps/v1", "Deployment", m["deployment"]["metadata"]["name"])
    if (ref.get("apiVersion"), ref.get("kind"), ref.get("name")) != want:
        return [f"HPA scaleTargetRef {ref} != {want}"]
    return []


def check_selectors(m):
    """Service, PDB, the Deployment's own selector and the anti-affinity all select the Deployment's pods."""
    labels = pod_labels(m)
    anti = pod_spec(m).get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    return [
        *_selector_problems("Service", m["service"]["spec"].get("selector"), labels),
        *_selector_problems("PodDisruptionBudget", m["pdb"]["spec"]["selector"].get("matchLabels"), labels),
        *_selector_problems("Deployment", m["deployment"]["spec"]["selector"].get("matchLabels"), labels),
        *[problem for term in anti
          for problem in _selector_problems("podAntiAffinity", term["podAffinityTerm"]["labelSelector"].get("matchLabels"), labels)],
    ]


def check_replicas(m):
    """HPA minReplicas >= 2 so that the PDB can let one pod go and one still serves; the Deployment leaves the
    count to the HPA (a replicas field would reset it on every apply)."""
    spec, pdb, problems = m["hpa"]["spec"], m["pdb"]["spec"], []
    low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
    if low < 2:
        problems.append(f"HPA minReplicas {low} < 2: a disruption would leave no pod serving")
    if high < low:
        problems.append(f"HPA maxReplicas {high} < minReplicas {low}")
    if ("minAvailable" in pdb) == ("maxUnavailable" in pdb):
        problems.append("the PDB needs exactly one of minAvailable / maxUnavailable")
    elif "maxUnavailable" in pdb and not (isinstance(pdb["maxUnavailable"], int) and 1 <= pdb["maxUnavailable"] < low):
        problems.append(f"PDB maxUnavailable {pdb['maxUnavailable']} must be an integer in [1, minReplicas {low})")
    elif "minAvailable" in pdb and not (isinstance(pdb["minAvailable"], int) and 1 <= pdb["minAvailable"] < low):
        problems.append(f"PDB minAvailable {pdb['minAvailable']} must be an integer in [1, minReplicas {low}): else drains block")
    if "replicas" in m["deployment"]["spec"]:
        problems.append("the Deployment sets replicas: the HPA owns the count")
    return problems


def _adapter_rules(m):
    return {rule.get("name", {}).get("as"): rule for rule in m["adapter_config"].get("rules", [])}


def check_metric(m):
    """The HPA's metric is one the adapter rule produces, from Triton's queue and success counters, for pods; its
    model matchers split the repository's ensembles from their composing models."""
    rules, problems = _adapter_rules(m), []
    metrics = [metric["pods"]["metric"]["name"] for metric in m["hpa"]["spec"].get("metrics", []) if metric["type"] == "Pods"]
    if not metrics:
        problems.append("the HPA has no Pods metric")
    for name in metrics:
        rule = rules.get(name)
        if rule is None:
            problems.append(f"HPA metric {name} is produced by no adapter rule (rules: {sorted(filter(None, rules))})")
            continue
        query = rule["metricsQuery"]
        if rule["resources"]["overrides"].get("pod", {}).get("resource") != "pod":
            problems.append(f"{name}: the rule does not map the pod label to pods (a Pods metric needs it)")
        numerator = re.search(r'rate\(nv_inference_queue_duration_us\{<<\.LabelMatchers>>,model!~"([^"]+)"\}', query)
        denominator = re.search(r'rate\(nv_inference_request_success\{<<\.LabelMatchers>>,model=~"([^"]+)"\}', query)
        if not numerator or not denominator:
            problems.append(f"{name}: query is not queue_duration(non-ensembles) / request_success(ensembles): {query}")
            continue
        for regex in (numerator.group(1), denominator.group(1)):
            for ensemble, steps in ensembles().items():
                if not re.fullmatch(regex, ensemble):
                    problems.append(f"{name}: model regex {regex!r} misses the ensemble {ensemble}")
                problems += [f"{name}: model regex {regex!r} takes the step {step} for an ensemble"
                             for step in steps if re.fullmatch(regex, step)]
    return problems


def check_queue_target(m):
    """The queue-time target sits above the delay the batchers add on purpose along each ensemble (else the HPA
    would scale an idle service to maxReplicas)."""
    problems = []
    for metric in m["hpa"]["spec"].get("metrics", []):
        if metric["type"] != "Pods" or metric["pods"]["metric"]["name"] != "triton_queue_time_per_request_us":
            continue
        target = quantity(metric["pods"]["target"]["averageValue"])
        for ensemble, steps in ensembles().items():
            floor = sum(queue_delay_us(step) for step in steps)
            if target <= floor:
                problems.append(f"queue target {target} us <= {ensemble}'s batching delays {floor} us")
    return problems if ensembles() else ["no ensembles in model_repository"]


def check_admin(m):
    """Restricted APIs on gRPC and HTTP alike, behind a header whose value is the Secret's key (through an env
    var), as the production profile of yolo_triton/security.py."""
    flags, problems = server_flags(m), []
    settings = {flag: flags.get(flag) for flag in ("--grpc-restricted-protocol", "--http-restricted-api")}
    parsed = {}
    for flag, setting in settings.items():
        match = re.fullmatch(r"([a-z,-]+):([a-z0-9-]+)=\$\(([A-Z_][A-Z0-9_]*)\)", setting or "")
        if not match:
            problems.append(f"{flag}={setting}: not <apis>:<lower-case header>=$(ENV)")
            continue
        apis = match.group(1).split(",")
        parsed[flag] = (apis, match.group(2), match.group(3))
        if not {"model-repository", "shared-memory"} <= set(apis):
            problems.append(f"{flag} leaves model-repository or shared-memory open: {apis}")
        if "health" in apis:
            problems.append(f"{flag} restricts health: the probes would fail")
    if len(parsed) == 2 and len(set(map(str, parsed.values()))) != 1:
        problems.append(f"gRPC and HTTP restrict differently: {settings}")
    for flag, (apis, header, env) in parsed.items():
        if (tuple(apis), header, env) != (security.RESTRICTED_APIS, security.ADMIN_HEADER, security.ADMIN_KEY_ENV):
            problems.append(f"{flag}: {apis}, {header}, $({env}) differ from yolo_triton.serving.security")
        ref = (env_var(m, env) or {}).get("valueFrom", {}).get("secretKeyRef", {})
        secret = m["secret"]
        if ref.get("name") != secret["metadata"]["name"] or ref.get("key") not in secret.get("stringData", {}):
            problems.append(f"{flag}: $({env}) is not a key of Secret {secret['metadata']['name']} ({ref})")
    placeholder = "".join(m["secret"].get("stringData", {}).values())
    try:
        security.restricted_flags(placeholder)  # the key rules of the project's own profile
    except ValueError as error:
        problems.append(f"the Secret template's value {placeholder!r}: {error}")
    if "CHANGE-ME" not in placeholder:
        problems.append(f"the Secret template's value {placeholder!r} is not an obvious placeholder")
    return problems


def check_model_repository(m):
    """--model-repository comes from the ConfigMap (default: /models, where Dockerfile.models bakes it and where
    yolo_triton.deploy mounts it) or is an s3:// / gs:// URL."""
    problems = []
    if server_flags(m).get("--model-repository") != "$(MODEL_REPOSITORY)":
        problems.append(f"--model-repository={server_flags(m).get('--model-repository')} is not $(MODEL_REPOSITORY)")
    ref = (env_var(m, "MODEL_REPOSITORY") or {}).get("valueFrom", {}).get("configMapKeyRef", {})
    config = m["config"]
    if ref.get("name") != config["metadata"]["name"] or ref.get("key") not in config.get("data", {}):
        problems.append(f"MODEL_REPOSITORY is not read from ConfigMap {config['metadata']['name']}: {ref}")
    value = config.get("data", {}).get("MODEL_REPOSITORY", "")
    if value != docker.CONTAINER_MODELS and not re.match(r"(s3|gs)://", value):
        problems.append(f"MODEL_REPOSITORY {value!r} is neither {docker.CONTAINER_MODELS} nor s3:// / gs://")
    if not re.search(rf"^COPY \. {re.escape(docker.CONTAINER_MODELS)}/?$", m["dockerfile_models"], re.M):
        problems.append(f"Dockerfile.models does not bake the repository into {docker.CONTAINER_MODELS}")
    return problems


def check_shm(m):
    """/dev/shm is a memory emptyDir as large as the docker run's --shm-size, inside the memory limit."""
    shm_flag = next(flag for flag in docker.DOCKER_RUN_FLAGS if flag.startswith("--shm-size="))
    wanted = quantity(shm_flag.split("=", 1)[1].upper().replace("G", "Gi").replace("M", "Mi"))
    mounts = {v["mountPath"]: v["name"] for v in container(m).get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod_spec(m).get("volumes", [])}
    volume = volumes.get(mounts.get("/dev/shm"), {}).get("emptyDir")
    if volume is None or volume.get("medium") != "Memory":
        return ["/dev/shm is not a memory emptyDir"]
    problems = []
    if quantity(volume.get("sizeLimit", 0)) != wanted:
        problems.append(f"/dev/shm sizeLimit {volume.get('sizeLimit')} != docker's {shm_flag}")
    limit = container(m).get("resources", {}).get("limits", {}).get("memory")
    if limit is None or quantity(limit) <= 2 * wanted:
        problems.append(f"memory limit {limit} leaves no room beside the {shm_flag} /dev/shm it includes")
    return problems


def check_drain(m):
    """The grace period covers the preStop sleep plus Triton's wait for in-flight requests."""
    c = container(m)
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep_s = int(sleep[1]) if sleep[:1] == ["sleep"] and len(sleep) == 2 else 0
    exit_s = int(server_flags(m).get("--exit-timeout-secs", 30))  # Triton's default
    grace = pod_spec(m).get("terminationGracePeriodSeconds", 30)
    problems = [] if sleep_s > 0 else ["no preStop sleep: requests still routed to a terminating pod are refused"]
    if grace <= sleep_s + exit_s:
        problems.append(f"terminationGracePeriodSeconds {grace} <= preStop {sleep_s} s + --exit-timeout-secs {exit_s} s")
    return problems


def check_security_context(m):
    pod, c = pod_spec(m).get("securityContext", {}), container(m).get("securityContext", {})
    problems = []
    if pod.get("runAsNonRoot") is not True or pod.get("runAsUser", 0) == 0:
        problems.append(f"pod not run as the non-root triton-server user: {pod}")
    if c.get("allowPrivilegeEscalation") is not False or c.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"container keeps privileges: {c}")
    if c.get("readOnlyRootFilesystem") is not True:
        problems.append("root filesystem writable")
    mounts = {v["mountPath"]: v["name"] for v in container(m).get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod_spec(m).get("volumes", [])}
    if "emptyDir" not in volumes.get(mounts.get("/tmp"), {}):
        problems.append("read-only root without an emptyDir on /tmp (caches, s3:// repository copies)")
    return problems


def check_resources(m):
    resources, problems = container(m).get("resources", {}), []
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    for name in ("cpu", "memory"):
        if name not in requests or name not in limits:
            problems.append(f"{name}: request and limit both needed")
        elif quantity(requests[name]) > quantity(limits[name]):
            problems.append(f"{name}: request {requests[name]} > limit {limits[name]}")
    if "nvidia.com/gpu" in requests and str(requests["nvidia.com/gpu"]) != str(limits.get("nvidia.com/gpu")):
        problems.append("nvidia.com/gpu request != limit (extended resources cannot be overcommitted)")
    return problems


def check_supervised(m):
    """tritonserver runs under yolo_triton.serving.supervise (a dead Python backend stub, which Triton 2.51 neither restarts
    nor reports, then restarts the container), watching Triton's own HTTP port."""
    c = container(m)
    words = [*c.get("command", []), *c.get("args", [])]
    if words[:3] != SUPERVISOR or "--" not in words:
        return [f"tritonserver is not run by {' '.join(SUPERVISOR)}: {words[:4]}"]
    http = server_flags(m).get("--http-port", "8000")
    supervisor = words[3:words.index("--")]
    return [] if supervisor == [f"--http-port={http}"] else [f"the supervisor watches {supervisor}, not --http-port={http}"]


CHECKS = [check_supervised, check_ports, check_probes, check_image, check_cuda_pool, check_kustomization, check_hpa_target,
          check_selectors, check_replicas, check_metric, check_queue_target, check_admin, check_model_repository,
          check_shm, check_drain, check_security_context, check_resources]


def _set(path, value):
    """A mutation: set manifests[path...] = value (a None value deletes)."""
    def mutate(m):
        node = m
        for key in path[:-1]:
            node = node[key] if not callable(key) else key(node)
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return mutate


def _c(m):
    return container(m)


def _named(name):
    return lambda items: next(item for item in items if item["name"] == name)


def _arg(m, prefix, new):
    args = container(m)["args"]
    args[[i for i, a in enumerate(args) if a.startswith(prefix)][0]] = new


MUTATIONS = [
    (check_supervised, "no supervisor", lambda m: container(m).update(command=["tritonserver"])),
    (check_supervised, "supervisor on another port", lambda m: container(m)["command"].__setitem__(3, "--http-port=9000")),
    (check_ports, "service http port", _set(["service", "spec", "ports", _named("http"), "port"], 8080)),
    (check_ports, "container grpc port", _set([_c, "ports", _named("grpc"), "containerPort"], 9001)),
    (check_ports, "metrics flag", lambda m: _arg(m, "--metrics-port=", "--metrics-port=9002")),
    (check_ports, "probe on grpc", _set([_c, "readinessProbe", "httpGet", "port"], "grpc")),
    (check_ports, "scrape annotation", _set(["deployment", "spec", "template", "metadata", "annotations", "prometheus.io/port"], "9090")),
    (check_probes, "readiness on live", _set([_c, "readinessProbe", "httpGet", "path"], "/v2/health/live")),
    (check_probes, "liveness on ready", _set([_c, "livenessProbe", "httpGet", "path"], "/v2/health/ready")),
    (check_probes, "short startup", _set([_c, "startupProbe", "failureThreshold"], 6)),
    (check_image, "other release", _set([_c, "image"], "yolo-triton-server:24.09")),
    (check_image, "Dockerfile base", lambda m: m.update(dockerfile_models=m["dockerfile_models"].replace(
        "ARG SERVER_IMAGE=yolo-triton-server:", "ARG SERVER_IMAGE=tritonserver:"))),
    (check_cuda_pool, "pool in MiB", lambda m: _arg(m, "--cuda-memory-pool-byte-size=", "--cuda-memory-pool-byte-size=0:4096")),
    (check_cuda_pool, "two GPUs", _set([_c, "resources", "limits", "nvidia.com/gpu"], 2)),
    (check_kustomization, "pdb not listed", lambda m: m["kustomization"]["resources"].remove("pdb.yaml")),
    (check_kustomization, "secret applied", lambda m: m["kustomization"]["resources"].append(f"{MANUAL}/admin-secret.template.yaml")),
    (check_kustomization, "new file unlisted", lambda m: m["files"].update({"ingress.yaml": []})),
    (check_hpa_target, "wrong name", _set(["hpa", "spec", "scaleTargetRef", "name"], "yolo-triton-server")),
    (check_hpa_target, "wrong kind", _set(["hpa", "spec", "scaleTargetRef", "kind"], "StatefulSet")),
    (check_selectors, "service selector", _set(["service", "spec", "selector", "app.kubernetes.io/name"], "yolo")),
    (check_selectors, "pdb selector", _set(["pdb", "spec", "selector", "matchLabels", "app.kubernetes.io/component"], "api")),
    (check_selectors, "empty service selector", _set(["service", "spec", "selector"], {})),
    (check_replicas, "minReplicas 1", _set(["hpa", "spec", "minReplicas"], 1)),
    (check_replicas, "minAvailable 2", lambda m: (m["pdb"]["spec"].pop("maxUnavailable"), m["pdb"]["spec"].update(minAvailable=2))),
    (check_replicas, "replicas in deployment", _set(["deployment", "spec", "replicas"], 3)),
    (check_metric, "metric renamed", _set(["hpa", "spec", "metrics", 0, "pods", "metric", "name"], "triton_queue_us")),
    (check_metric, "ensemble regex", lambda m: m["adapter_config"]["rules"][0].update(
        metricsQuery=m["adapter_config"]["rules"][0]["metricsQuery"].replace('".+_e2e"', '".+_ensemble"'))),
    (check_metric, "denominator counter", lambda m: m["adapter_config"]["rules"][0].update(
        metricsQuery=m["adapter_config"]["rules"][0]["metricsQuery"].replace("nv_inference_request_success", "nv_inference_count"))),
    (check_metric, "regex catching steps", lambda m: m["adapter_config"]["rules"][0].update(
        metricsQuery=m["adapter_config"]["rules"][0]["metricsQuery"].replace('model=~".+_e2e"', 'model=~"yolov.+"'))),
    (check_queue_target, "target below batching floor", _set(["hpa", "spec", "metrics", 0, "pods", "target", "averageValue"], "1000")),
    (check_admin, "other header on http", lambda m: _arg(m, "--http-restricted-api=", "--http-restricted-api=model-repository,shared-memory,trace,logging:x-admin=$(TRITON_ADMIN_KEY)")),
    (check_admin, "shared memory open", lambda m: _arg(m, "--grpc-restricted-protocol=", "--grpc-restricted-protocol=model-repository:admin-key=$(TRITON_ADMIN_KEY)")),
    (check_admin, "secret key", _set([_c, "env", _named("TRITON_ADMIN_KEY"),
                                      "valueFrom", "secretKeyRef", "key"], "key")),
    (check_admin, "secret name", _set(["secret", "metadata", "name"], "triton-admin")),
    (check_admin, "real-looking secret", _set(["secret", "stringData", "admin-key"], "q8Yx2vR0bLkE1pZs7uWc3nTa")),
    (check_admin, "key unusable in the flag", _set(["secret", "stringData", "admin-key"], "CHANGE-ME:now")),
    (check_model_repository, "config value", _set(["config", "data", "MODEL_REPOSITORY"], "/model")),
    (check_model_repository, "configmap name", _set([_c, "env", _named("MODEL_REPOSITORY"),
                                                     "valueFrom", "configMapKeyRef", "name"], "triton-config")),
    (check_model_repository, "Dockerfile target", lambda m: m.update(dockerfile_models=m["dockerfile_models"].replace("COPY . /models", "COPY . /repo"))),
    (check_shm, "default shm", _set([pod_spec, "volumes", _named("dshm"), "emptyDir", "sizeLimit"], "64Mi")),
    (check_shm, "shm on disk", _set([pod_spec, "volumes", _named("dshm"), "emptyDir", "medium"], None)),
    (check_shm, "memory limit", _set([_c, "resources", "limits", "memory"], "2Gi")),
    (check_drain, "short grace", _set(["deployment", "spec", "template", "spec", "terminationGracePeriodSeconds"], 30)),
    (check_drain, "no preStop", _set([_c, "lifecycle"], None)),
    (check_security_context, "root", _set(["deployment", "spec", "template", "spec", "securityContext", "runAsUser"], 0)),
    (check_security_context, "capabilities kept", _set([_c, "securityContext", "capabilities", "drop"], [])),
    (check_security_context, "no /tmp", lambda m: container(m)["volumeMounts"].remove(
        next(v for v in container(m)["volumeMounts"] if v["mountPath"] == "/tmp"))),
    (check_resources, "no cpu limit", _set([_c, "resources", "limits", "cpu"], None)),
    (check_resources, "request over limit", _set([_c, "resources", "requests", "memory"], "64Gi")),
]


# --- tests ---------------------------------------------------------------------------------------------------------

def _all_documents():
    return [pytest.param(path, index, doc, id=f"{path.relative_to(K8S).as_posix()}#{index}")
            for path in _manifest_files() for index, doc in enumerate(_documents(path))]


@pytest.mark.parametrize("path,index,document", _all_documents())
def test_manifest_is_valid_kubernetes(path, index, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_broken_manifests(manifests):
    """The schema check works: a misspelled field, a wrong type and a field in the wrong place are rejected."""
    misspelled = copy.deepcopy(manifests["deployment"])
    probe = misspelled["spec"]["template"]["spec"]["containers"][0]
    probe["readinesProbe"] = probe.pop("readinessProbe")
    # strict is what catches a misspelling: the lenient schemas accept unknown fields
    kubernetes_validate.validate(misspelled, KUBERNETES_VERSION, strict=False)
    wrong_type = copy.deepcopy(manifests["service"])
    wrong_type["spec"]["ports"][0]["port"] = "eight thousand"
    misplaced = copy.deepcopy(manifests["hpa"])
    misplaced["spec"]["minReplica"] = misplaced["spec"].pop("minReplicas")
    for broken in (misspelled, wrong_type, misplaced):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_check_passes(manifests, check):
    assert check(manifests) == []


@pytest.mark.parametrize("check,mutate", [pytest.param(c, mu, id=f"{c.__name__}-{name}") for c, name, mu in MUTATIONS])
def test_check_catches_breakage(manifests, check, mutate):
    broken = copy.deepcopy(manifests)
    mutate(broken)
    assert check(broken), f"{check.__name__} did not notice the breakage"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (its kustomize needs no cluster)")
def test_kustomize_renders_exactly_the_listed_manifests(manifests):
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}
    listed = [key for f in manifests["kustomization"]["resources"] for key in manifests["files"][f]]
    assert sorted(rendered) == sorted((manifests[key]["kind"], manifests[key]["metadata"]["name"]) for key in listed)
    for key in listed:  # no transformer rewrites them behind the checks' back
        assert rendered[(manifests[key]["kind"], manifests[key]["metadata"]["name"])] == manifests[key]


def test_every_check_can_fail():
    assert {check.__name__ for check in CHECKS} == {check.__name__ for check, _, _ in MUTATIONS}
