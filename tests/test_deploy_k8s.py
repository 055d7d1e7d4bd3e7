"""deploy/k8s/ and the Dockerfile, offline.

The manifests are validated with ``kubernetes-validate`` (strict: unknown fields are
errors) against a pinned Kubernetes version, then checked against each other, against
the real ``wsserve serve`` command line (the container args must parse and validate) and
against the Dockerfile. Needs ``pip install -e '.[deploy]'``; skipped without it except
under CI (``CI`` set). Docker itself is not needed: the Dockerfile is checked by reading.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI"):
    import kubernetes_validate
    import yaml
else:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    yaml = pytest.importorskip("yaml")

from wsserve.cli import build_parser, config_from_args
from wsserve.server import EXIT_AFTER_DRAIN_S

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
#: The Kubernetes version the manifests are validated against.
KUBERNETES_VERSION = "1.30.0"


def _docs() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return _docs()


@pytest.fixture(scope="module")
def container(docs) -> dict[str, Any]:
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_every_kind_is_there(docs) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "PersistentVolumeClaim"} <= set(docs)


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_manifest_validates_against_pinned_kubernetes(path: str) -> None:
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any error


def test_the_validator_rejects_broken_manifests(docs) -> None:
    """The check above can fail: a misspelt field and a wrong type are caught."""
    bad = copy.deepcopy(docs["Deployment"])
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    bad = copy.deepcopy(docs["Deployment"])
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _container_config(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch, volumes: Path):
    """The container's arguments parsed by wsserve's real CLI, in the container's environment;
    a mounted path in it stands for a directory under ``volumes``."""
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for var in container.get("env", []):
        value = var["value"]
        if value in mounts:
            value = str(volumes / value.strip("/").replace("/", "_"))
            Path(value).mkdir(exist_ok=True)
        monkeypatch.setenv(var["name"], value)
    args = build_parser().parse_args(container["args"])
    return args, config_from_args(args)  # raises on a bad value


def test_container_args_are_a_valid_wsserve_command(container, monkeypatch, tmp_path) -> None:
    args, config = _container_config(container, monkeypatch, tmp_path)
    env = {v["name"]: v["value"] for v in container["env"]}
    # the repository served, and watched for new versions, is the mounted volume
    assert env["WSSERVE_MODEL_REPOSITORY"] in {m["mountPath"] for m in container["volumeMounts"]}
    assert config.reload and config.model_repository == (tmp_path / "models",)
    assert args.command == "serve" and config.host == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"ws": config.port, "grpc": config.grpc_port}


def test_the_grpc_port_is_the_same_in_the_args_the_container_and_the_service(docs, container, monkeypatch,
                                                                               tmp_path) -> None:
    """``--grpc-port`` in the container args is the container port named ``grpc``, which the
    Service exposes (as gRPC, for a mesh), and the image installs the grpc extra it needs."""
    config = _container_config(container, monkeypatch, tmp_path)[1]
    (grpc_port,) = [p for p in container["ports"] if p["name"] == "grpc"]
    assert config.grpc_port is not None and grpc_port["containerPort"] == config.grpc_port != config.port
    assert grpc_port["protocol"] == "TCP"
    (svc_port,) = [p for p in docs["Service"]["spec"]["ports"] if p["targetPort"] in ("grpc", config.grpc_port)]
    assert svc_port["targetPort"] == "grpc" and svc_port["appProtocol"] == "grpc" and svc_port["protocol"] == "TCP"
    # the image's default extras (ARG EXTRAS) include grpc: the pod's --grpc-port would exit 2 without it
    (extras,) = [rest.partition("=")[2].strip('"') for word, rest in _instructions()
                 if word == "ARG" and rest.startswith("EXTRAS=")]
    assert "grpc" in extras.split(",")
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("grpcio") for req in optional["grpc"])


#: The longest a server takes to exit after its drain deadline (wsserve/server.py): the time for
#: the connections ended with shutting_down to close (Server.drain), for model code still running
#: (Server.close), then for threads stuck in model code (exit_past_stuck_threads).
STOP_AFTER_DRAIN_S = EXIT_AFTER_DRAIN_S


def test_deploy_docs_state_the_exit_bound() -> None:
    """docs/deploy.md and the manifest's comment give operators the code's bound, not a stale one."""
    said = f"{EXIT_AFTER_DRAIN_S:g} s"
    assert f"plus {said}" in (ROOT / "docs" / "deploy.md").read_text()
    assert f"the {said} wsserve may take" in (K8S / "deployment.yaml").read_text()
    dockerfile = DOCKERFILE.read_text()
    stop = build_parser().parse_args(["serve"]).drain_timeout_s + EXIT_AFTER_DRAIN_S
    assert f"at most {said} after" in dockerfile and f"--time {stop:g}" in dockerfile


def test_grace_period_outlasts_prestop_plus_drain(docs, container, monkeypatch, tmp_path) -> None:
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    drain = _container_config(container, monkeypatch, tmp_path)[1].drain_timeout_s
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    prestop = float(cmd[1])
    # The kubelet's grace period starts before preStop; SIGTERM comes after it.  After the drain
    # deadline the server still takes up to STOP_AFTER_DRAIN_S to end what is left, close and exit.
    assert spec["terminationGracePeriodSeconds"] >= prestop + drain + STOP_AFTER_DRAIN_S


def test_probes_use_the_health_routes_on_the_container_port(container) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = container[probe]["httpGet"]["port"]
        assert port in ports or port in ports.values(), probe


def test_service_hpa_and_pdb_point_at_the_deployment(docs, container) -> None:
    dep = docs["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = docs["Service"]["spec"]
    assert svc["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for p in svc["ports"]:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values()
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    ref = hpa["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (dep["apiVersion"], dep["kind"], dep["metadata"]["name"])
    # a voluntary disruption must always be possible, and leave a pod serving
    assert hpa["minReplicas"] >= 2 and pdb["maxUnavailable"] < hpa["minReplicas"]
    # CPU utilisation targets need a CPU request
    assert container["resources"]["requests"]["cpu"]


def test_runs_as_non_root_with_the_repository_on_a_volume(docs, container) -> None:
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["memory"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    repo = mounts[env["WSSERVE_MODEL_REPOSITORY"]]
    claim = volumes[repo["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    # the root filesystem is read-only: the weights cache must be a writable volume
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert env["WSSERVE_CACHE_DIR"] in mounts and not mounts[env["WSSERVE_CACHE_DIR"]].get("readOnly")


# -- Dockerfile ------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> list[str]:
    import json

    return json.loads(rest)


def test_dockerfile_copies_files_that_exist_and_ignores_the_rest() -> None:
    copies = [rest.split() for word, rest in _instructions() if word == "COPY"]
    assert copies
    ignore = (ROOT / ".dockerignore").read_text()
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
            assert f"!{src}" in ignore or f"!{src}/" in ignore, f".dockerignore excludes {src}"
    # what the package build needs is copied: pyproject.toml, its readme, the package
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = {s for *sources, _ in copies for s in sources}
    assert {"pyproject.toml", project["readme"], "wsserve"} <= copied


def test_dockerfile_base_user_install_and_command(container, docs) -> None:
    ins = _instructions()
    (base,) = [rest for word, rest in ins if word == "FROM"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", base)
    assert match, base
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert (int(match[1]), int(match[2])) >= tuple(int(x) for x in re.findall(r"\d+", requires)[:2])
    # the install command the README gives (in the image, optionally with extras: ".[dask]")
    assert "python3 -m pip install -e . && python3 -m wsserve serve" in (ROOT / "README.md").read_text()
    assert any(word == "RUN" and re.search(r"python3 -m pip install -e \"?\.(\$\{EXTRAS:\+\[\$EXTRAS\]\})?\"?( |$)", rest)
               for word, rest in ins)
    # non-root, and the same user as the Kubernetes pod
    (user,) = [rest for word, rest in ins if word == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0 and uid == docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    # `wsserve serve --host 0.0.0.0`, a command the real parser accepts
    (entry,) = [_exec_form(rest) for word, rest in ins if word == "ENTRYPOINT"]
    (cmd,) = [_exec_form(rest) for word, rest in ins if word == "CMD"]
    assert entry == ["wsserve"]
    config = config_from_args(build_parser().parse_args(cmd))
    assert cmd[0] == "serve" and config.host == "0.0.0.0"
    (expose,) = [rest for word, rest in ins if word == "EXPOSE"]
    assert int(expose) == config.port == container["ports"][0]["containerPort"]
    # the Kubernetes args replace CMD and keep the ENTRYPOINT
    assert container["args"][0] == "serve" and "command" not in container
    assert shlex.join(entry + container["args"]).startswith("wsserve serve --host 0.0.0.0")


def test_the_image_build_context_is_enough_to_build_wsserve(tmp_path: Path) -> None:
    """What the Dockerfile copies builds a complete wheel (offline: no build isolation)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for *sources, _dest in (rest.split() for word, rest in _instructions() if word == "COPY"):
        for src in sources:
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, ctx / src, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / src, ctx / src)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path / "dist"), str(ctx)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("wsserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"wsserve/__main__.py", "wsserve/static/index.html", "wsserve/py.typed",
            "wsserve/distributed/cli.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "wsserve = wsserve.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
