"""deploy/kubernetes/, checked offline: every manifest is well-formed for
its kind (the fields Kubernetes requires, of the right types), and the
manifests agree with each other and with the container image: the Service
the StatefulSet names is headless and selects its pods, the probes reach
the health listener the server is told to open, the pod's memory covers
--max-memory, the Secrets land where the image's entry point reads them,
and the rebalance Job's cluster target names the StatefulSet's pods.

Run by ctest (KubernetesManifestsTest) with pytest."""

import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"

# The fields each kind must have, by path, and their types: a small schema
# of what these manifests use, from the Kubernetes API reference.
REQUIRED = {
    ("v1", "Service"): {
        "metadata.name": str, "spec.selector": dict, "spec.ports": list},
    ("apps/v1", "StatefulSet"): {
        "metadata.name": str, "spec.serviceName": str, "spec.replicas": int,
        "spec.selector.matchLabels": dict,
        "spec.template.metadata.labels": dict,
        "spec.template.spec.containers": list},
    ("policy/v1", "PodDisruptionBudget"): {
        "metadata.name": str, "spec.selector.matchLabels": dict},
    ("batch/v1", "Job"): {
        "metadata.name": str, "spec.template.spec.containers": list,
        "spec.template.spec.restartPolicy": str},
}
CONTAINER_REQUIRED = {"name": str, "image": str}


def get(document, path):
    for key in path.split("."):
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document


def memory_bytes(quantity):
    """A Kubernetes memory quantity ("9Gi", "512Mi", "8G") in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?", str(quantity))
    assert match, f"not a memory quantity: {quantity}"
    units = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(match.group(1)) * units[match.group(2)]


def size_flag_bytes(value):
    """h5depotd's SIZE ("8G" is 8 GiB, as its flags read it)."""
    match = re.fullmatch(r"(\d+)([KMGT]i?B?)?", value)
    assert match, f"not a size: {value}"
    unit = (match.group(2) or "")[:1]
    return int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20,
                                  "G": 2**30, "T": 2**40}[unit]


def flag(args, name):
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


@pytest.fixture(scope="module")
def documents():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
            found[document["kind"]] = document
    return found


def test_every_manifest_has_what_its_kind_requires(documents):
    assert set(documents) == {kind for _, kind in REQUIRED}
    for document in documents.values():
        key = (document.get("apiVersion"), document.get("kind"))
        assert key in REQUIRED, f"unexpected {key}"
        for path, kind in REQUIRED[key].items():
            assert isinstance(get(document, path), kind), (key, path)
        for container in get(document, "spec.template.spec.containers") or []:
            for field, kind in CONTAINER_REQUIRED.items():
                assert isinstance(container.get(field), kind), (key, field)


def test_the_service_is_headless_and_selects_the_servers(documents):
    service, servers = documents["Service"], documents["StatefulSet"]
    assert service["spec"]["clusterIP"] == "None"
    # Members stay in DNS while they restart: placement does not move.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert servers["spec"]["serviceName"] == service["metadata"]["name"]
    labels = servers["spec"]["template"]["metadata"]["labels"]
    assert servers["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = documents["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_probes_memory_and_secrets_fit_the_server(documents):
    pod = documents["StatefulSet"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    args = server["args"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    # The probes ask the health listener the server is told to open.
    health = flag(args, "health-listen")
    assert health is not None
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == int(health.rsplit(":", 1)[1])
    assert ports["health"] == int(health.rsplit(":", 1)[1])
    # The image's entry point: the depot's and the lane's ports, and where
    # it reads the TLS files and the auth file.
    containerfile = (ROOT / "deploy" / "Containerfile").read_text()
    entry = re.search(r"ENTRYPOINT \[(.*?)\]", containerfile, re.S).group(1)
    entry_args = re.findall(r'"([^"]+)"', entry)
    assert ports["grpc"] == int(flag(entry_args, "listen").rsplit(":", 1)[1])
    assert ports["lane"] == int(flag(entry_args, "data-port"))
    # Memory: requested as limited, and room for --max-memory plus 1 GiB.
    resources = server["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert memory_bytes(resources["limits"]["memory"]) >= \
        size_flag_bytes(flag(args, "max-memory")) + 2**30
    # Secrets mounted where the entry point reads them.
    (mount,) = server["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    paths = {f"{mount['mountPath']}/{item['path']}"
             for source in volume["projected"]["sources"]
             for item in source["secret"]["items"]}
    for name in ("tls-cert-file", "tls-key-file", "auth-file"):
        assert flag(entry_args, name) in paths, name
    # The server runs as the image's user, which can read them.
    assert pod["securityContext"]["runAsUser"] == 65534
    assert pod["securityContext"]["fsGroup"] == 65534
    assert "USER nobody" in containerfile


def test_the_rebalance_job_names_the_statefulsets_pods(documents):
    servers, service = documents["StatefulSet"], documents["Service"]
    (job,) = documents["Job"]["spec"]["template"]["spec"]["containers"]
    assert job["command"] == ["h5depot"]
    assert "rebalance" in job["args"]
    target = flag(job["args"], "server")
    match = re.fullmatch(r"cluster:([^{]+)\{0\.\.(\d+)\}\.([^:]+):(\d+)"
                         r"\?replicas=(\d+)", target)
    assert match, target
    name, last, domain, port, replicas = match.groups()
    assert name == servers["metadata"]["name"] + "-"
    assert int(last) == servers["spec"]["replicas"] - 1
    assert domain == service["metadata"]["name"]
    grpc_port = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert int(port) == grpc_port[0]["port"]
    assert 1 <= int(replicas) <= servers["spec"]["replicas"]
    # The PDB never lets more servers go than copies can cover.
    pdb = documents["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] <= int(replicas) - 1
    env = {e["name"]: e["value"] for e in job["env"]}
    (mount,) = job["volumeMounts"]
    for variable in ("H5DEPOT_TLS_CA_FILE", "H5DEPOT_TOKEN_FILE"):
        assert env[variable].startswith(mount["mountPath"] + "/")
