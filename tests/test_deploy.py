"""deploy/: the Dockerfile, compose file and Kubernetes manifests agree with each other and with the gateway.

Static checks read every file as its tool would (YAML, TOML through the gateway's own
`load_config`); the last two tests run the image's entry point. With a Docker daemon the
image itself is built; without one (this machine and CI have the docker CLI only) the
package is installed the way the Dockerfile installs it, into a fresh venv from the files
the Dockerfile copies, and `sluice serve` is started from there with the compose config.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import yaml  # type: ignore[import-untyped]

from proxy.cli import _parser
from proxy.config import ConfigError, load_config
from proxy.shutdown import graceful_timeout_s

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S_FILES = sorted((DEPLOY / "k8s").rglob("*.yaml"))
YAML_FILES = [COMPOSE, *K8S_FILES]
IMAGE = "sluice-gateway"  # the image name the compose file and manifests use (any tag)
DRAIN_DEFAULT_S = 20.0  # [server] drain_s when a config leaves it out
DOCKER_STOP_MARGIN_S = 10  # compose stop_grace_period must leave this after drain_s
TEST_REDIS_URL = "redis://127.0.0.1:6379/14"  # .ci/run's Redis; db 15 is the store contract tests'


# --- reading the files ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0 for the first FROM
    name: str  # upper case: COPY, RUN, ...
    args: str  # the rest of the line, continuations joined


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, line continuations joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stage = -1
    instructions = []
    for line in lines:
        name, _, args = line.partition(" ")
        if name.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, name.upper(), args.strip()))
    return instructions


def exec_form(name: str) -> list[str]:
    """The JSON (exec) form of the one ENTRYPOINT / CMD / HEALTHCHECK CMD of the final stage."""
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    found = [i.args for i in instructions if i.name == name and i.stage == last]
    assert len(found) == 1, f"the final stage needs exactly one {name}"
    args = found[0]
    if name == "HEALTHCHECK":
        args = args[args.index(" CMD ") + len(" CMD ") :]
    value = json.loads(args)
    assert isinstance(value, list), f"{name} must use the exec form"
    return [str(v) for v in value]


def copied_sources() -> list[str]:
    """Every build-context path a COPY or ADD takes (not `COPY --from=stage`)."""
    sources = []
    for instruction in dockerfile():
        if instruction.name not in ("COPY", "ADD") or "--from=" in instruction.args:
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        sources += words[:-1]  # the last word is the destination
    return sources


def documents(path: Path) -> list[Any]:
    with path.open() as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def k8s_objects(folder: Path | None = None) -> list[dict[str, Any]]:
    files = [f for f in K8S_FILES if folder is None or f.parent == folder]
    return [doc for f in files for doc in documents(f)]


def env_refs(value: object) -> set[str]:
    """Every NAME of an "env:NAME" value anywhere in a parsed TOML document."""
    if isinstance(value, str):
        return {value[4:]} if value.startswith("env:") else set()
    if isinstance(value, dict):
        return set().union(*(env_refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(env_refs(v) for v in value))
    return set()


def dummy_env(names: set[str]) -> dict[str, str]:
    return {name: f"dummy-{name.lower()}-0123456789" for name in names}  # distinct: keys must differ


@dataclass(frozen=True)
class SluiceConfig:
    where: str  # for messages
    text: str

    @property
    def data(self) -> dict[str, Any]:
        return tomllib.loads(self.text)

    @property
    def env_names(self) -> set[str]:
        return env_refs(self.data)

    @property
    def required_env(self) -> set[str]:
        """Names that must be set: [auth] and [redis] secrets (a provider's key may be missing)."""
        data = self.data
        return env_refs(data.get("auth", {})) | env_refs(data.get("redis", {}))

    @property
    def drain_s(self) -> float:
        return float(self.data.get("server", {}).get("drain_s", DRAIN_DEFAULT_S))


def configmap_configs(folder: Path | None = None) -> dict[str, SluiceConfig]:
    """ConfigMap name -> the sluice.toml it embeds."""
    found = {}
    for obj in k8s_objects(folder):
        if obj["kind"] == "ConfigMap":
            for key, text in obj.get("data", {}).items():
                if key.endswith(".toml"):
                    found[obj["metadata"]["name"]] = SluiceConfig(f"ConfigMap {obj['metadata']['name']}/{key}", text)
    return found


def all_configs() -> list[SluiceConfig]:
    files = [SluiceConfig(str(p.relative_to(ROOT)), p.read_text()) for p in sorted(DEPLOY.glob("*.toml"))]
    return files + list(configmap_configs().values())


def compose() -> dict[str, Any]:
    (doc,) = documents(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def compose_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target -> source of a compose service's short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def compose_config_path() -> Path:
    """The deploy/ file mounted as the gateway's config (its --config path)."""
    gateway = compose()["services"]["gateway"]
    command = gateway.get("command") or exec_form("CMD")
    config_path = command[command.index("--config") + 1]
    return (DEPLOY / compose_mounts(gateway)[config_path]).resolve()


@dataclass(frozen=True)
class SluiceContainer:
    where: str
    spec: dict[str, Any]  # the container
    pod: dict[str, Any]  # the pod spec
    folder: Path  # its manifests' folder: what `kubectl apply -f` applies with it

    @property
    def objects(self) -> list[dict[str, Any]]:
        return k8s_objects(self.folder)

    def serve_args(self) -> Any:
        """`sluice serve` options as the gateway parses ENTRYPOINT + args."""
        argv = exec_form("ENTRYPOINT") + (self.spec.get("args") or exec_form("CMD"))
        assert argv[:2] == ["sluice", "serve"]
        return _parser().parse_args(argv[1:])

    def config(self) -> SluiceConfig:
        path = self.serve_args().config
        for mount in self.spec.get("volumeMounts", []):
            if path.startswith(mount["mountPath"].rstrip("/") + "/"):
                volume = next(v for v in self.pod["volumes"] if v["name"] == mount["name"])
                name = volume["configMap"]["name"]
                configs = configmap_configs(self.folder)
                assert name in configs, f"{self.where}: ConfigMap {name} is not in the manifests"
                return configs[name]
        raise AssertionError(f"{self.where}: no volume mounted at --config {path}")

    def env(self) -> dict[str, dict[str, Any]]:
        """Variable name -> its `valueFrom` (envFrom expanded from the objects in the same folder)."""
        names = {
            entry["name"]: entry.get("valueFrom", {"value": entry.get("value")}) for entry in self.spec.get("env", [])
        }
        for source in self.spec.get("envFrom", []):
            kind, ref = (
                ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source["configMapRef"])
            )
            match = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == ref["name"]]
            assert match, f"{self.where}: envFrom {kind} {ref['name']} is not in the manifests, so its keys are unknown"
            ref_key = "secretKeyRef" if kind == "Secret" else "configMapKeyRef"
            for key in {**match[0].get("data", {}), **match[0].get("stringData", {})}:
                names[source.get("prefix", "") + key] = {ref_key: {**ref, "key": key}}
        return names


def sluice_containers() -> list[SluiceContainer]:
    found = []
    for path in K8S_FILES:
        for obj in documents(path):
            pod = obj.get("spec", {}).get("template", {}).get("spec")
            if pod is None:
                continue
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                if container["image"].split(":")[0].endswith(IMAGE):
                    where = f"{path.relative_to(ROOT)}: {obj['kind']} {obj['metadata']['name']}/{container['name']}"
                    found.append(SluiceContainer(where, container, pod, path.parent))
    return found


def probe_target(probe: dict[str, Any]) -> str:
    """What a probe asks for: an httpGet path, or the command of an exec probe."""
    if "httpGet" in probe:
        return str(probe["httpGet"]["path"])
    return " ".join(probe["exec"]["command"])


# --- the static checks ------------------------------------------------------------------------


def test_the_files_exist():
    assert DOCKERFILE.is_file()
    assert (ROOT / ".dockerignore").is_file()
    assert COMPOSE.is_file()
    assert {p.parent.name for p in K8S_FILES} == {"sidecar", "replicated"}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    docs = documents(path)
    assert docs
    assert all(isinstance(doc, dict) for doc in docs)


def test_every_kubernetes_object_is_named():
    objects = k8s_objects()
    assert objects
    for obj in objects:
        assert obj.get("apiVersion"), obj
        assert obj.get("kind"), obj
        assert obj.get("metadata", {}).get("name"), obj


@pytest.mark.parametrize("config", all_configs(), ids=lambda c: c.where)
def test_every_config_passes_the_gateways_loader(config, tmp_path):
    path = tmp_path / "sluice.toml"
    path.write_text(config.text)
    loaded = load_config(path, env=dummy_env(config.env_names))
    assert loaded.routes
    assert config.drain_s == 20
    for name in config.required_env:  # the loader itself refuses a required secret that is unset
        with pytest.raises(ConfigError, match=name):
            load_config(path, env=dummy_env(config.env_names - {name}))


def test_compose_provides_exactly_the_env_its_config_reads():
    config = SluiceConfig("compose", compose_config_path().read_text())
    environment = compose()["services"]["gateway"]["environment"]
    assert isinstance(environment, dict)
    assert set(environment) == config.env_names
    for name, value in environment.items():  # from the shell or deploy/.env, never a literal
        form = r":\?.+" if name in config.required_env else ":-"  # a required one must be set
        assert re.fullmatch(r"\$\{" + name + form + r"\}", value), f"{name}: {value}"


def test_each_sluice_container_gets_exactly_the_env_its_config_reads():
    containers = sluice_containers()
    assert {c.where.split(":")[0] for c in containers} == {
        "deploy/k8s/sidecar/app-with-sluice.yaml",
        "deploy/k8s/replicated/sluice.yaml",
    }
    for container in containers:
        config = container.config()
        env = container.env()
        assert set(env) == config.env_names, container.where
        for name, value_from in env.items():
            ref = value_from.get("secretKeyRef")
            assert ref is not None, f"{container.where}: {name} must come from a Secret, not the manifest"
            assert not (name in config.required_env and ref.get("optional")), f"{container.where}: {name} is required"


def test_compose_and_k8s_point_redis_at_their_redis():
    gateway_config = tomllib.loads(compose_config_path().read_text())
    assert urlsplit(gateway_config["redis"]["url"]).hostname in compose()["services"]
    for container in sluice_containers():
        redis_table = container.config().data.get("redis")
        if redis_table is None:
            continue
        services = {o["metadata"]["name"]: o for o in container.objects if o["kind"] == "Service"}
        url = urlsplit(redis_table["url"])
        assert url.hostname in services, container.where
        assert url.port in [p["port"] for p in services[url.hostname]["spec"]["ports"]]


def test_the_dockerfile_copies_files_that_exist_and_are_not_ignored():
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "proxy/", "middleware/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        name = source.rstrip("/")
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in ignored), f"{source} is in .dockerignore"
    for must_ignore in (".venv", ".git", "sluice.db"):
        assert any(fnmatch.fnmatch(must_ignore, pattern) for pattern in ignored), must_ignore


def test_the_dockerfile_is_multi_stage_slim_and_non_root():
    instructions = dockerfile()
    froms = [i.args for i in instructions if i.name == "FROM"]
    assert len(froms) == 2
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    users = [i.args for i in instructions if i.name == "USER" and i.stage == 1]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(i.name == "EXPOSE" and i.args == "8080" for i in instructions)
    assert exec_form("ENTRYPOINT")[:2] == ["sluice", "serve"]
    args = _parser().parse_args(exec_form("ENTRYPOINT")[1:] + exec_form("CMD"))
    assert (args.host, args.port, args.config) == ("0.0.0.0", 8080, "/etc/sluice/sluice.toml")
    health = exec_form("HEALTHCHECK")
    assert health[0] == "python"
    assert "http://127.0.0.1:8080/healthz" in health[-1]


def test_compose_builds_the_image_and_mounts_files_that_exist():
    services = compose()["services"]
    gateway = services["gateway"]
    assert (DEPLOY / gateway["build"]["context"]).resolve() == ROOT
    assert (ROOT / gateway["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert gateway["deploy"]["replicas"] == 3
    assert services["redis"]["image"].startswith("redis:7")
    assert services["lb"]["image"].startswith("nginx:")
    for name, service in services.items():
        for target, source in compose_mounts(service).items():
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts {source} at {target}"
            else:
                assert source in compose().get("volumes", {}), f"{name}: named volume {source} is not declared"
    assert "/var/lib/sluice" in compose_mounts(gateway)  # writable ledger spool under read_only: true
    assert gateway.get("read_only") is True


def test_nginx_balances_the_replicas_without_buffering_streams():
    conf = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    assert upstream is not None
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(2), re.M)
    assert servers == [("gateway", "8080")]
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    assert re.search(r"proxy_buffering\s+off;", conf)
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", conf)
    assert read_timeout is not None
    assert int(read_timeout.group(1)) > 600  # [timeouts] total_s: the gateway, not nginx, ends a stream


def test_compose_waits_for_the_drain_before_killing():
    config = SluiceConfig("compose", compose_config_path().read_text())
    grace = compose()["services"]["gateway"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, grace
    assert int(match.group(1)) >= config.drain_s + DOCKER_STOP_MARGIN_S
    assert int(match.group(1)) > graceful_timeout_s(config.drain_s)  # the drain, then uvicorn's wait after it


def test_probes_point_at_healthz_and_readyz():
    for container in sluice_containers():
        spec = container.spec
        args = container.serve_args()
        assert "/readyz" in probe_target(spec["readinessProbe"]), container.where
        assert "/healthz" in probe_target(spec["livenessProbe"]), container.where
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = spec.get(kind)
            if probe is None:
                continue
            if args.host == "127.0.0.1":  # the kubelet's httpGet cannot reach a loopback-only port
                assert "exec" in probe, f"{container.where}: {kind}"
                assert f"http://127.0.0.1:{args.port}/" in probe_target(probe), container.where
            else:
                port = probe["httpGet"]["port"]
                named = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}
                assert named.get(port, port) == args.port, container.where


def test_the_sidecar_listens_on_loopback_and_the_replicas_do_not():
    hosts = {c.where.split(":")[0].split("/")[2]: c.serve_args().host for c in sluice_containers()}
    assert hosts == {"sidecar": "127.0.0.1", "replicated": "0.0.0.0"}


def test_termination_grace_covers_prestop_and_drain():
    for container in sluice_containers():
        pre_stop = container.spec.get("lifecycle", {}).get("preStop", {})
        if "sleep" in pre_stop:
            sleep_s = float(pre_stop["sleep"]["seconds"])
        elif "exec" in pre_stop:
            command = pre_stop["exec"]["command"]
            assert command[0] == "sleep", container.where
            sleep_s = float(command[1])
        else:
            sleep_s = 0.0
        drain_s = container.config().drain_s
        grace = container.pod["terminationGracePeriodSeconds"]
        assert grace >= sleep_s + drain_s, container.where
        assert grace > sleep_s + graceful_timeout_s(drain_s), container.where  # uvicorn waits past the drain
        if container.serve_args().host != "127.0.0.1":  # behind a Service: leave the endpoints first
            assert sleep_s > 0, container.where


def test_the_sluice_containers_are_locked_down_with_writable_state():
    for container in sluice_containers():
        security = container.spec["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        pod_security = container.pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True
        assert {**pod_security, **security}.get("runAsUser", 0) != 0
        resources = container.spec["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert "memory" in resources["limits"]
        ledger_dir = str(Path(container.config().data["ledger"]["path"]).parent)
        mounts = {m["mountPath"]: m["name"] for m in container.spec["volumeMounts"]}
        assert ledger_dir in mounts, f"{container.where}: the ledger (or its spool) needs a writable volume"
        volume = next(v for v in container.pod["volumes"] if v["name"] == mounts[ledger_dir])
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume


# --- the image's entry point, run ------------------------------------------------------------


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment minus this venv's, so a child uses only what it was given."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return {**env, **(extra or {})}


def run(command: Sequence[str | Path], *, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the gateway installed as deploy/Dockerfile installs it.

    The same steps, from the same files: the build context is only what the Dockerfile
    COPYs (so a file it forgets fails here too), `pip wheel` builds the gateway's wheel
    and fetches its runtime dependencies (pip's cache makes this ~15 s here), and
    `pip install --no-index` installs those and nothing else: no [dev] extra.
    """
    root: Path = tmp_path_factory.mktemp("image")
    context, wheels, venv = root / "context", root / "wheels", root / "venv"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source in copied_sources():
        target = context / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=ignore)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
    env = clean_env()
    run([sys.executable, "-m", "venv", venv], env=env)
    pip = venv / "bin" / "pip"
    run([pip, "wheel", "--quiet", "--wheel-dir", wheels, context], env=env, cwd=root)
    run([pip, "install", "--quiet", "--no-index", "--find-links", wheels, "sluice-gateway"], env=env, cwd=root)
    return venv


def test_the_image_entrypoint_runs(image_venv, tmp_path):
    entrypoint = exec_form("ENTRYPOINT")
    if docker_daemon():
        tag = "sluice-gateway:test-deploy"
        run(["docker", "build", "-f", DOCKERFILE, "-t", tag, ROOT], cwd=ROOT, timeout=1200)  # a cold base image pull
        result = run(["docker", "run", "--rm", tag, "--help"], timeout=120)
    else:
        binary = image_venv / "bin" / entrypoint[0]
        result = run([binary, *entrypoint[1:], "--help"], env=clean_env(), cwd=tmp_path)
    assert "usage: sluice serve" in result.stdout
    # What the venv holds is the package and its runtime dependencies, nothing from [dev].
    python = image_venv / "bin" / "python"
    probe = "import importlib.util as u, proxy; print(proxy.__file__); print(u.find_spec('pytest') is None)"
    where, no_pytest = run([python, "-c", probe], env=clean_env(), cwd=tmp_path).stdout.split()
    assert Path(where).is_relative_to(image_venv)
    assert no_pytest == "True"
    for module in ("uvloop", "httptools"):
        run([python, "-c", f"import {module}"], env=clean_env(), cwd=tmp_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(image_venv: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], SluiceConfig]]:
    """`sluice serve` from the image venv on the compose config, Redis and ledger moved to this machine."""
    text = compose_config_path().read_text()
    # CI's Redis; a database of its own keeps this test's ledger records apart from other tests' data.
    text, n_redis = re.subn(r'(?m)^url = "redis://redis:6379/0"', f'url = "{TEST_REDIS_URL}"', text)
    text, n_ledger = re.subn(r'(?m)^path = ".*"', f'path = "{tmp_path / "sluice.db"}"', text)
    assert (n_redis, n_ledger) == (1, 1)
    config = SluiceConfig("served", text)
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    port = free_port()
    # The ENTRYPOINT as it is, then the container's args; --host/--port again (the last wins)
    # so that the test listens on loopback only.
    command = [str(image_venv / "bin" / exec_form("ENTRYPOINT")[0]), *exec_form("ENTRYPOINT")[1:]]
    command += ["--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=clean_env(dummy_env(config.env_names)), cwd=tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "no answer on /healthz:\n" + (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield url, process, config
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        log.close()


def test_sluice_serve_runs_the_deploy_config(served, image_venv, tmp_path):
    url, process, config = served
    assert httpx.get(url + "/healthz").status_code == 200
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["redis"] != "not configured"
    # [auth] is on with the keys from the environment.
    team_key = dummy_env(config.env_names)["SLUICE_KEY_TEAM_A"]
    assert httpx.get(url + "/v1/models").status_code == 401
    models = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {team_key}"})
    assert models.status_code == 200
    assert "fast" in [m["id"] for m in models.json()["data"]]
    request_id = models.headers["x-request-id"]
    # The Dockerfile's HEALTHCHECK command, pointed at this port.
    port = str(urlsplit(url).port)
    health = [str(image_venv / "bin" / "python"), *exec_form("HEALTHCHECK")[1:]]
    health[-1] = health[-1].replace(":8080/", f":{port}/")
    run(health, env=clean_env(), cwd=tmp_path)
    # SIGTERM (docker stop, kubelet): a clean exit well within the grace period.
    process.send_signal(signal.SIGTERM)
    assert process.wait(graceful_timeout_s(config.drain_s)) == 0
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    # [redis] is wired: the call's ledger record is in the shared Redis stream.
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrevrange("sluice:v1:ledger", count=100))
        assert request_id in {json.loads(fields[b"record"])["request_id"] for _, fields in entries}
        client.delete("sluice:v1:ledger", *client.scan_iter("sluice:v1:ledger:*"))
    finally:
        client.close()
