"""A test double for a kubelet: the pods of `helm template`'s objects as Docker containers.

NOT a runtime for users. It exists so the tests can run the chart's pods exactly as
rendered (commands, env, volumes, security context, probes, hooks) on a Docker engine,
where no Kubernetes API server can be had. It honours what a kubelet (and the few
controllers the chart needs) would honour for these specs, and nothing more:

- a pod is an infra container holding the network namespace (hostname = pod name, the
  Service names as network aliases) plus one container per init/app container joined to it;
- env: value (with `$(VAR)` expansion), secretKeyRef, configMapKeyRef, the downward API's
  metadata.name/namespace and status.podIP, envFrom; command/args/workingDir as Kubernetes
  maps them onto ENTRYPOINT/CMD;
- volumes: emptyDir as a tmpfs volume kept mounted by the infra container (it outlives
  container restarts, not the pod); configMap, secret and projected volumes as read-only
  files with their modes (group fsGroup); PVCs (volumeClaimTemplates) as named volumes
  kept across pod restarts, group-owned by fsGroup;
- security context: runAsUser/runAsGroup/fsGroup (supplementary group), runAsNonRoot,
  readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation=false; cpu/memory limits;
- init containers one after another to completion, then the app containers;
- startup, readiness and liveness probes (exec, httpGet, tcpSocket) run from here, as the
  kubelet runs them from the node; a failed liveness or startup probe restarts the
  container, an exited container restarts with back-off (restartPolicy);
- names: a Service's name (and .<ns>, .<ns>.svc, .<ns>.svc.cluster.local) resolves to the
  pods its selector matches; a StatefulSet's pods are `<name>-<ordinal>`, also known as
  `<pod>.<headless-service>`;
- stopping: preStop hooks (exec, httpGet), then the stop signal, SIGKILL after
  terminationGracePeriodSeconds;
- controllers: Deployments (RollingUpdate with maxSurge/maxUnavailable, Recreate),
  StatefulSets (a deleted pod comes back under its name, with its volumes), Jobs
  (backoffLimit).

Known differences: a Service's alias resolves to every running pod it selects, ready or
not (aliases are fixed when a pod's network is created); while none of its pods runs, a
ClusterIP Service's name is held by a placeholder that refuses connections, as a virtual
IP without endpoints does; ports are not remapped (a Service whose port differs from its
targetPort is refused). Kinds it does not run (Ingress, HPA, KEDA ScaledObject,
NetworkPolicy, PDB, ServiceMonitor, ...) are listed in `Cluster.skipped`, never acted on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import secrets
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from tests.harness.waiting import wait_until

Obj = dict[str, Any]

RUN_KINDS = ("Deployment", "StatefulSet", "Job")
DATA_KINDS = ("ConfigMap", "Secret", "Service")
FILE_VOLUMES = ("configMap", "secret", "projected")
LABEL = "io.podrunner.stack"
CRASH_BACKOFF = (10, 20, 40, 80, 160, 300)
# `kubectl port-forward service/NAME` for the tests on the host: a relay on the network
# that resolves the Service's name for every connection.
RELAY = """
import asyncio, sys
host, port = sys.argv[1], int(sys.argv[2])
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data); await writer.drain()
    except OSError: pass
    finally: writer.close()
async def handle(reader, writer):
    try: upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
    except OSError: return writer.close()
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
async def main():
    await (await asyncio.start_server(handle, "0.0.0.0", port)).serve_forever()
asyncio.run(main())
"""


class Unsupported(RuntimeError):
    """A spec field this double does not implement: refused, never ignored."""


def docker(
    *args: str, input_bytes: bytes | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        ["docker", *args], input=input_bytes, capture_output=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr.decode(errors='replace')}")
    return done


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (64Mi, 500m, 1) as a number."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names replaced, `$$(VAR)` escapes, others kept."""

    def one(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return f"$({match.group(1)})"
        return env.get(match.group(2), match.group(0))

    return re.sub(r"\$\$\(([A-Za-z_]\w*)\)|\$\(([A-Za-z_]\w*)\)", one, text)


def parallel(*calls: Callable[[], object]) -> None:
    """Run the calls each in its own thread and wait for all of them."""
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def alias_options(names: Iterable[str], namespace: str) -> list[str]:
    """`--network-alias` options for Service (or pod) names as the cluster's DNS answers them."""
    suffixes = ("", f".{namespace}", f".{namespace}.svc", f".{namespace}.svc.cluster.local")
    return [o for name in names for s in suffixes for o in ("--network-alias", name + s)]


class Container:
    """One container of a pod and what the kubelet knows about it."""

    def __init__(self, pod: Pod, spec: Obj, init: bool) -> None:
        self.pod, self.spec, self.init = pod, spec, init
        self.name = f"{pod.cluster.prefix}-{pod.name}-{spec['name']}"
        self.generation = self.restarts = 0
        self.running = self.started = self.ready = False
        self.exit_code: int | None = None
        self.restart_reason: str | None = None
        self.previous_logs = ""

    def port(self, value: int | str) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        for port in self.spec.get("ports", []):
            if port.get("name") == value:
                return int(port["containerPort"])
        raise Unsupported(f"{self.name}: no container port named {value}")


class Pod:
    """A pod: volumes, an infra container holding the network, its containers, its probes."""

    def __init__(
        self,
        cluster: Cluster,
        owner: Workload,
        name: str,
        template: Obj,
        labels: dict[str, str],
        subdomain: str | None = None,
    ) -> None:
        self.cluster, self.owner, self.name = cluster, owner, name
        self.subdomain = subdomain
        self.deleting = False
        self.labels = labels
        self.annotations = dict(template.get("metadata", {}).get("annotations") or {})
        self.spec: Obj = template["spec"]
        self.infra = f"{cluster.prefix}-{name}"
        self.ip = ""
        self.phase = "Pending"
        self.message = ""
        self.stopping = threading.Event()
        self.created_at = time.time()
        self.ready_at: float | None = None
        self.volumes: dict[str, str] = {}  # volume name -> docker volume
        self.temporary: list[str] = []  # docker volumes removed with the pod
        self.inits = [Container(self, spec, True) for spec in self.spec.get("initContainers", [])]
        self.containers = [Container(self, spec, False) for spec in self.spec["containers"]]
        self.thread = threading.Thread(target=self._run, name=f"pod-{name}", daemon=True)

    def __repr__(self) -> str:
        return f"<Pod {self.name} {self.phase}{' ready' if self.ready else ''}>"

    @property
    def names(self) -> list[str]:
        return [c.name for c in [*self.inits, *self.containers]]

    @property
    def security(self) -> Obj:
        return dict(self.spec.get("securityContext") or {})

    @property
    def grace(self) -> float:
        return float(self.spec.get("terminationGracePeriodSeconds", 30))

    @property
    def ready(self) -> bool:
        return (
            self.phase == "Running"
            and not self.stopping.is_set()
            and all(c.ready for c in self.containers)
        )

    def event(self, text: str) -> None:
        self.cluster.record(self.name, text)

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self._prepare()
            for container in self.inits:
                while not self._run_to_completion(container):
                    if self.spec.get("restartPolicy", "Always") == "Never":
                        return self._finish("Failed", f"init container {container.spec['name']}")
                    if self.stopping.wait(self._backoff(container)):
                        return None
            if self.stopping.is_set():
                return None
            for container in self.containers:
                self._create(container)
            self.phase = "Running"
            self.event("running")
            self._supervise()
        except Exception as exc:  # a pod that cannot start fails, as CreateContainerError
            self._finish("Failed", f"{type(exc).__name__}: {exc}")
        return None

    def _finish(self, phase: str, message: str = "") -> None:
        self.phase, self.message = phase, message
        self.event(f"{phase} {message}".strip())

    def _prepare(self) -> None:
        cluster = self.cluster
        mounts: list[str] = []
        for volume in self.spec.get("volumes", []):
            name = volume["name"]
            self.volumes[name] = docker_name = f"{self.infra}-{name}"
            if "emptyDir" in volume:
                cluster.volume_create(docker_name, self._tmpfs_options(volume["emptyDir"]))
                self.temporary.append(docker_name)
                mounts += ["--mount", f"type=volume,src={docker_name},dst=/podrunner/{name}"]
            elif any(key in volume for key in FILE_VOLUMES):
                cluster.volume_create(docker_name)
                self.temporary.append(docker_name)
                self._fill(docker_name, self._files(volume))
            elif "persistentVolumeClaim" in volume:
                self.volumes[name] = cluster.claim(volume["persistentVolumeClaim"]["claimName"])
            else:
                raise Unsupported(f"{self.name}: volume {name}: {sorted(volume)}")
        for claim in self.owner.obj["spec"].get("volumeClaimTemplates", []):
            claim_name = f"{claim['metadata']['name']}-{self.name}"
            self.volumes[claim["metadata"]["name"]] = cluster.claim(claim_name, self.security)
        cluster.release_names(self)
        aliases = cluster.aliases(self)
        cluster.run_on_network(self.infra, "--hostname", self.name, *aliases, *mounts)
        inspected = json.loads(docker("inspect", self.infra).stdout)[0]
        self.ip = inspected["NetworkSettings"]["Networks"][cluster.network]["IPAddress"]
        self.event(f"network ready, ip {self.ip}")

    def _tmpfs_options(self, spec: Obj) -> list[str]:
        options = ["mode=0777"]
        if "sizeLimit" in spec:
            options.append(f"size={int(quantity(spec['sizeLimit']))}")
        if "fsGroup" in self.security:
            options = [f"gid={self.security['fsGroup']}", "mode=2777", *options[1:]]
        return ["--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", f"o={','.join(options)}"]

    def _files(self, volume: Obj) -> dict[str, tuple[bytes, int]]:
        """path -> (content, mode) of a configMap, secret or projected volume."""
        spec = volume.get("projected") or volume.get("configMap") or volume.get("secret") or {}
        default = int(spec.get("defaultMode", 0o644))
        if "projected" in volume:
            sources = spec["sources"]
        else:
            sources = [{"configMap" if "configMap" in volume else "secret": spec}]
        files: dict[str, tuple[bytes, int]] = {}
        for source in sources:
            (kind, ref), *_ = source.items()
            if kind not in ("configMap", "secret"):
                raise Unsupported(f"{self.name}: projected source {kind}")
            name = ref.get("name") or ref.get("secretName")
            data = self.cluster.lookup(kind, name, ref.get("optional"))
            items = ref.get("items") or [{"key": key, "path": key} for key in data]
            for item in items:
                mode = int(item.get("mode", ref.get("defaultMode", default)))
                if "fsGroup" in self.security:
                    mode |= 0o440
                files[item["path"]] = (data[item["key"]], mode)
        return files

    def _fill(self, volume: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        group = int(self.security.get("fsGroup", 0))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for path, (content, mode) in files.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.uid, info.gid = len(content), mode, 0, group
                info.mtime = int(time.time())
                archive.addfile(info, io.BytesIO(content))
        helper = f"{volume}-fill"
        docker("create", "--label", self.cluster.label, "--name", helper,
               "-v", f"{volume}:/v", self.cluster.pause_image, "true")  # fmt: skip
        try:
            # Without --archive: the tar's own uid/gid and modes are kept.
            docker("cp", "-", f"{helper}:/v", input_bytes=buffer.getvalue())
        finally:
            docker("rm", "-f", helper, check=False)

    # -- containers ------------------------------------------------------------------------
    def _env(self, spec: Obj) -> dict[str, str]:
        cluster, env = self.cluster, {}
        for source in spec.get("envFrom", []):
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            for key, value in cluster.lookup(kind, ref["name"], ref.get("optional")).items():
                env[source.get("prefix", "") + key] = value.decode()
        for item in spec.get("env", []):
            if "valueFrom" not in item:
                env[item["name"]] = expand(str(item.get("value", "")), env)
                continue
            (kind, ref), *_ = item["valueFrom"].items()
            if kind in ("secretKeyRef", "configMapKeyRef"):
                data = cluster.lookup(kind.removesuffix("KeyRef"), ref["name"], ref.get("optional"))
                if ref["key"] in data:
                    env[item["name"]] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise LookupError(f"{kind} {ref['name']}/{ref['key']} not found")
            elif kind == "fieldRef":
                env[item["name"]] = self._field(ref["fieldPath"])
            else:
                raise Unsupported(f"{self.name}: env {item['name']} from {kind}")
        return env

    def _field(self, path: str) -> str:
        plain = {
            "metadata.name": self.name,
            "metadata.namespace": self.cluster.namespace,
            "status.podIP": self.ip,
            "spec.nodeName": "podrunner",
            "spec.serviceAccountName": str(self.spec.get("serviceAccountName", "default")),
        }
        if path in plain:
            return plain[path]
        found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if found:
            source = self.labels if found.group(1) == "labels" else self.annotations
            return str(source.get(found.group(2), ""))
        raise Unsupported(f"{self.name}: downward API field {path}")

    def _docker_args(self, container: Container) -> list[str]:
        """`docker run` options, image and command of a container (env and mounts included)."""
        spec, env = container.spec, self._env(container.spec)
        args = ["--name", container.name, "--label", self.cluster.label,
                "--network", f"container:{self.infra}", "--pull", "never"]  # fmt: skip
        args += [f"--env={key}={value}" for key, value in env.items()]
        args += self._security_args(container)
        limits = (spec.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", str(int(quantity(limits["memory"])))]
        if "cpu" in limits:
            args += ["--cpus", f"{quantity(limits['cpu']):.3f}"]
        for mount in spec.get("volumeMounts", []):
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise Unsupported(f"{container.name}: subPath mounts")
            read_only = mount.get("readOnly") or self._always_read_only(mount["name"])
            # volume-nocopy: Kubernetes never copies the image's files into a volume.
            options = ",volume-nocopy" + (",readonly" if read_only else "")
            source = self.volumes[mount["name"]]
            args += ["--mount", f"type=volume,src={source},dst={mount['mountPath']}{options}"]
        if "workingDir" in spec:
            args += ["--workdir", spec["workingDir"]]
        command = [expand(str(part), env) for part in spec.get("command", [])]
        rest = [expand(str(part), env) for part in spec.get("args", [])]
        if command:
            return [*args, "--entrypoint", command[0], spec["image"], *command[1:], *rest]
        return [*args, spec["image"], *rest]

    def _security_args(self, container: Container) -> list[str]:
        """The pod's and the container's security context as `docker run` options."""
        pod_security, args = self.security, list[str]()
        security = {**pod_security, **(container.spec.get("securityContext") or {})}
        if "runAsUser" in security:
            user = str(security["runAsUser"])
            if "runAsGroup" in security:
                user += f":{security['runAsGroup']}"
            args += ["--user", user]
        if security.get("runAsNonRoot") and int(security.get("runAsUser", 0)) == 0:
            raise Unsupported(f"{container.name}: runAsNonRoot without a runAsUser")
        for group in [pod_security.get("fsGroup"), *pod_security.get("supplementalGroups", [])]:
            if group is not None:
                args += ["--group-add", str(group)]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if security.get("privileged"):
            raise Unsupported(f"{container.name}: privileged")
        capabilities = security.get("capabilities") or {}
        args += [f"--cap-drop={cap}" for cap in capabilities.get("drop", [])]
        args += [f"--cap-add={cap}" for cap in capabilities.get("add", [])]
        return args

    def _always_read_only(self, volume_name: str) -> bool:
        for volume in self.spec.get("volumes", []):
            if volume["name"] == volume_name:
                return any(key in volume for key in FILE_VOLUMES)
        return False

    def _run_to_completion(self, container: Container) -> bool:
        self._start(container)
        self.event(f"init {container.spec['name']} started")
        waited = docker("wait", container.name, timeout=24 * 3600)
        container.exit_code = int(waited.stdout.decode().strip() or -1)
        container.previous_logs = self.cluster.logs(container.name)
        docker("rm", "-f", container.name, check=False)
        self.event(f"init {container.spec['name']} exited {container.exit_code}")
        if container.exit_code != 0:
            container.restarts += 1
        return container.exit_code == 0

    def _start(self, container: Container) -> None:
        docker("rm", "-f", container.name, check=False)
        docker("run", "--detach", *self._docker_args(container))

    def _create(self, container: Container) -> None:
        self._start(container)
        container.generation += 1
        container.running, container.started, container.ready = True, False, False
        container.exit_code, container.restart_reason = None, None
        self.cluster.watch(container)
        threading.Thread(
            target=Prober(container, container.generation).run,
            name=f"probe-{container.name}",
            daemon=True,
        ).start()
        self.event(f"container {container.spec['name']} started ({container.generation})")

    def _backoff(self, container: Container) -> float:
        return float(CRASH_BACKOFF[min(container.restarts, len(CRASH_BACKOFF)) - 1])

    def _supervise(self) -> None:
        policy = self.spec.get("restartPolicy", "Always")
        while not self.stopping.wait(0.5):
            for container in self.containers:
                if container.running and container.restart_reason is None:
                    continue
                if container.restart_reason is not None and container.running:
                    self.event(f"{container.spec['name']}: {container.restart_reason}, restarting")
                    self._stop_container(container, self.grace)
                code = container.exit_code
                if policy == "Never" or (policy == "OnFailure" and code == 0):
                    if all(not c.running for c in self.containers):
                        failed = [c.spec["name"] for c in self.containers if c.exit_code != 0]
                        return self._finish("Failed" if failed else "Succeeded", " ".join(failed))
                    continue
                container.restarts += 1
                container.previous_logs = self.cluster.logs(container.name)
                delay = self._backoff(container) if container.restart_reason is None else 0
                self.event(f"{container.spec['name']} exited {code}, restart in {delay:.0f} s")
                if self.stopping.wait(delay):
                    return None
                self._create(container)
        return None

    # -- stop ------------------------------------------------------------------------------
    def hook(self, container: Container, handler: Obj, timeout: float) -> bool:
        """Run an exec / httpGet / tcpSocket handler (a probe or a hook); True on success."""
        try:
            if "exec" in handler:
                done = docker("exec", container.name, *handler["exec"]["command"],
                              timeout=timeout, check=False)  # fmt: skip
                return done.returncode == 0
            if "httpGet" in handler:
                get = handler["httpGet"]
                scheme = str(get.get("scheme", "HTTP")).lower()
                port = container.port(get["port"])
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                url = f"{scheme}://{self.ip}:{port}{get.get('path', '/')}"
                response = httpx.get(url, headers=headers, timeout=timeout, verify=False)
                return 200 <= response.status_code < 400
            if "tcpSocket" in handler:
                port = container.port(handler["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=timeout):
                    return True
        except (subprocess.TimeoutExpired, httpx.HTTPError, OSError):
            return False
        raise Unsupported(f"{container.name}: handler {sorted(handler)}")

    def _stop_container(self, container: Container, grace: float) -> None:
        """preStop hook, then the stop signal; SIGKILL when the grace period is over."""
        deadline = time.monotonic() + grace
        container.ready = False
        pre_stop = (container.spec.get("lifecycle") or {}).get("preStop")
        if pre_stop and container.running:
            self.event(f"{container.spec['name']}: preStop hook")
            ok = self.hook(container, pre_stop, timeout=grace)
            self.event(f"{container.spec['name']}: preStop hook {'done' if ok else 'failed'}")
        remaining = max(2.0, deadline - time.monotonic())  # the kubelet's 2 s after a hook
        self.event(f"{container.spec['name']}: stop signal, {remaining:.0f} s grace")
        docker("stop", "--time", str(math.ceil(remaining)), container.name,
               timeout=remaining + 60, check=False)  # fmt: skip
        state = self.cluster.state(container.name)
        container.exit_code = state.get("ExitCode") if state else None
        container.running = False
        self.event(f"{container.spec['name']}: exited {container.exit_code}")

    def delete(self, grace: float | None = None) -> None:
        """Graceful deletion: every container's preStop and stop signal, in parallel."""
        if self.stopping.is_set():
            return
        self.deleting = True
        self.stopping.set()
        self.event("terminating")
        seconds = self.grace if grace is None else grace
        running = [c for c in self.containers if c.running]
        parallel(*(lambda c=c: self._stop_container(c, seconds) for c in running))
        self._remove()

    def kill(self) -> None:
        """Force deletion: SIGKILL everything, no hook, no grace (a node crash)."""
        self.deleting = True
        self.stopping.set()
        docker("kill", *self.names, self.infra, check=False)
        self.event("killed")
        for container in self.containers:
            container.running = container.ready = False
        self._remove()

    def _remove(self) -> None:
        self.thread.join(timeout=30)
        for container in self.containers:  # init containers' logs were kept as they ended
            container.previous_logs = self.cluster.logs(container.name, tail=2000)
        docker("rm", "-f", *self.names, self.infra, check=False)
        self.cluster.hold_names(self)
        if self.temporary:
            docker("volume", "rm", "-f", *self.temporary, check=False)
        self.phase = "Deleted"
        self.event("deleted")


class Prober:
    """The startup, liveness and readiness probes of one container generation."""

    def __init__(self, container: Container, generation: int) -> None:
        self.container, self.generation = container, generation
        self.pod = container.pod

    def alive(self) -> bool:
        c = self.container
        return c.generation == self.generation and c.running and not self.pod.stopping.is_set()

    def run(self) -> None:
        spec, c = self.container.spec, self.container
        began = time.monotonic()
        probes = {kind: spec.get(f"{kind}Probe") for kind in ("startup", "liveness", "readiness")}
        due = {k: began + float(p.get("initialDelaySeconds", 0)) for k, p in probes.items() if p}
        failures = dict.fromkeys(probes, 0)
        successes = dict.fromkeys(probes, 0)
        c.started = probes["startup"] is None
        while self.alive():
            if c.started and not probes["readiness"]:
                c.ready = True
            active = ["startup"] if not c.started else ["liveness", "readiness"]
            for kind in (k for k in active if probes[k] and time.monotonic() >= due[k]):
                probe = probes[kind] or {}
                due[kind] = time.monotonic() + float(probe.get("periodSeconds", 10))
                ok = self.pod.hook(c, probe, timeout=float(probe.get("timeoutSeconds", 1)))
                if not self.alive():
                    return
                failures[kind] = 0 if ok else failures[kind] + 1
                successes[kind] = successes[kind] + 1 if ok else 0
                threshold = int(probe.get("failureThreshold", 3))
                if kind == "startup" and ok:
                    c.started = True
                    for later in ("liveness", "readiness"):
                        if later in due:
                            due[later] = max(due[later], time.monotonic())
                elif kind == "readiness":
                    if successes[kind] >= int(probe.get("successThreshold", 1)):
                        c.ready = True
                    elif failures[kind] >= threshold:
                        c.ready = False
                elif failures[kind] >= threshold:
                    c.restart_reason = f"{kind} probe failed {failures[kind]} times"
                    c.ready = False
                    return
            if self.pod.ready and self.pod.ready_at is None:
                self.pod.ready_at = time.time()
                self.pod.event("ready")
            time.sleep(0.2)


class Workload:
    """A Deployment, StatefulSet or Job and the pods it owns."""

    def __init__(self, cluster: Cluster, obj: Obj) -> None:
        self.cluster, self.obj = cluster, obj
        self.kind, self.name = obj["kind"], obj["metadata"]["name"]
        self.pods: list[Pod] = []
        self.lock = threading.RLock()
        self.failed_pods = 0

    @property
    def template(self) -> Obj:
        template: Obj = self.obj["spec"]["template"]
        return template

    @property
    def replicas(self) -> int:
        return 1 if self.kind == "Job" else int(self.obj["spec"].get("replicas", 1))

    def revision(self) -> str:
        text = json.dumps(self.template, sort_keys=True).encode()
        return hashlib.sha256(text).hexdigest()[:10]

    def new_pod(self, ordinal: int | None = None) -> Pod:
        labels = dict(self.template.get("metadata", {}).get("labels") or {})
        if self.kind == "StatefulSet":
            name = f"{self.name}-{ordinal}"
            labels["statefulset.kubernetes.io/pod-name"] = name
            labels["apps.kubernetes.io/pod-index"] = str(ordinal)
        elif self.kind == "Deployment":
            labels["pod-template-hash"] = self.revision()
            name = f"{self.name}-{self.revision()}-{secrets.token_hex(3)[:5]}"
        else:
            labels["job-name"] = labels["batch.kubernetes.io/job-name"] = self.name
            name = f"{self.name}-{secrets.token_hex(3)[:5]}"
        template = self.template
        if self.kind == "Job":
            template = {**template, "spec": {"restartPolicy": "Never", **template["spec"]}}
        subdomain = self.obj["spec"].get("serviceName") if self.kind == "StatefulSet" else None
        pod = Pod(self.cluster, self, name, template, labels, subdomain)
        with self.lock:
            self.pods.append(pod)
        pod.start()
        return pod

    def live(self) -> list[Pod]:
        with self.lock:
            return [p for p in self.pods if p.phase != "Deleted" and not p.deleting]

    def start(self) -> None:
        if self.kind == "StatefulSet":
            ordered = self.obj["spec"].get("podManagementPolicy", "OrderedReady") != "Parallel"
            for ordinal in range(self.replicas):
                pod = self.new_pod(ordinal)
                if ordered:
                    self.cluster.wait(lambda pod=pod: pod.ready, 600, f"{pod.name} ready")  # type: ignore[misc]
        elif self.kind == "Deployment":
            for _ in range(self.replicas):
                self.new_pod()
        else:
            threading.Thread(target=self._job, name=f"job-{self.name}", daemon=True).start()

    def _job(self) -> None:
        limit = int(self.obj["spec"].get("backoffLimit", 6))
        while not self.cluster.closing.is_set():
            pod = self.new_pod()
            while pod.phase in ("Pending", "Running"):
                if self.cluster.closing.wait(1):
                    return
            if pod.phase == "Succeeded":
                self.cluster.record(self.name, "job complete")
                return
            self.failed_pods += 1
            if self.failed_pods > limit:
                self.cluster.record(self.name, "job failed: backoffLimit reached")
                return

    def complete(self) -> bool:
        with self.lock:
            return any(p.phase == "Succeeded" for p in self.pods)

    def replace(self, old: Pod) -> Pod | None:
        """What the controller does about a deleted pod: a StatefulSet recreates its
        ordinal, a Deployment tops its replicas up; a Job's own loop handles its pods."""
        if self.cluster.closing.is_set() or self.kind == "Job":
            return None
        if self.kind == "StatefulSet":
            return self.new_pod(int(old.name.rsplit("-", 1)[1]))
        if len(self.live()) < self.replicas:
            return self.new_pod()
        return None


class Cluster:
    """The rendered objects' workloads on one Docker network; `close()` removes it all."""

    def __init__(
        self,
        objects: Iterable[Obj],
        *,
        namespace: str,
        pause_image: str,
        prefix: str | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.namespace, self.pause_image = namespace, pause_image
        self.prefix = prefix or f"pods{secrets.token_hex(3)}"
        self.network = f"{self.prefix}-net"
        self.label = f"{LABEL}={self.prefix}"
        self.log = log
        self.objects = list(objects)
        self.events: list[tuple[float, str, str]] = []
        self.skipped: dict[str, list[str]] = {}
        self.workloads: dict[str, Workload] = {}
        self.closing = threading.Event()
        self._watched: dict[str, Container] = {}
        self._lock = threading.Lock()
        for obj in self.objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if kind in RUN_KINDS:
                self.workloads[name] = Workload(self, obj)
            elif kind not in DATA_KINDS:
                self.skipped.setdefault(kind, []).append(name)
        self._check_service_ports()

    # -- objects ---------------------------------------------------------------------------
    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def lookup(self, kind: str, name: str, optional: Any = False) -> dict[str, bytes]:
        """A Secret's or ConfigMap's data ({} for a missing optional one)."""
        kind = {"secret": "Secret", "configMap": "ConfigMap"}.get(kind, kind)
        data = self.data(kind, name)
        if data is None and not optional:
            raise LookupError(f"{kind} {name} not found")
        return data or {}

    def data(self, kind: str, name: str) -> dict[str, bytes] | None:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                data = obj.get("data") or {}
                if kind == "ConfigMap":
                    out = {k: str(v).encode() for k, v in data.items()}
                    binary = obj.get("binaryData") or {}
                    out.update({k: base64.b64decode(v) for k, v in binary.items()})
                else:
                    out = {k: base64.b64decode(v) for k, v in data.items()}
                out.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
                return out
        return None

    def services_of(self, labels: Mapping[str, str]) -> list[Obj]:
        selectors = ((svc, svc["spec"].get("selector") or {}) for svc in self.of_kind("Service"))
        return [svc for svc, sel in selectors if sel and sel.items() <= labels.items()]

    def aliases(self, pod: Pod) -> list[str]:
        """`--network-alias` options: the names of the pod's Services (and of the pod itself
        under its StatefulSet's headless Service)."""
        services = self.services_of(pod.labels)
        names = [svc["metadata"]["name"] for svc in services]
        if pod.subdomain in set(names) - set(self._virtual(pod.labels)):
            names.append(f"{pod.name}.{pod.subdomain}")
        return alias_options(names, self.namespace)

    def _virtual(self, labels: Mapping[str, str]) -> list[str]:
        """The ClusterIP (not headless) Services selecting these labels."""
        chosen = self.services_of(labels)
        return [svc["metadata"]["name"] for svc in chosen if svc["spec"].get("clusterIP") != "None"]

    def hold_names(self, gone: Pod) -> None:
        """A ClusterIP Service left without a running pod keeps its name: a placeholder
        with no listener answers it, refusing connections like a virtual IP without
        endpoints (a vanished name would make clients and sentinels wait on DNS)."""
        running = [p for w in self.workloads.values() for p in w.live() if p is not gone and p.ip]
        for name in self._virtual(gone.labels):
            if any(name in self._virtual(pod.labels) for pod in running):
                continue
            aliases = alias_options([name], self.namespace)
            self.run_on_network(f"{self.prefix}-hold-{name}", *aliases, check=False)

    def release_names(self, pod: Pod) -> None:
        """A pod of the Service starts: its placeholder goes."""
        holders = [f"{self.prefix}-hold-{name}" for name in self._virtual(pod.labels)]
        if holders:
            docker("rm", "-f", *holders, check=False)

    def _check_service_ports(self) -> None:
        """Refuse a Service whose port is not its pods' port: aliases cannot remap ports."""
        for workload in self.workloads.values():
            labels = workload.template.get("metadata", {}).get("labels") or {}
            declared = [
                p for c in workload.template["spec"]["containers"] for p in c.get("ports", [])
            ]
            for service in self.services_of(labels):
                for port in service["spec"].get("ports", []):
                    target = port.get("targetPort", port["port"])
                    numbers = {
                        int(p["containerPort"])
                        for p in declared
                        if target in (p.get("name"), p["containerPort"])
                    }
                    if numbers and numbers != {int(port["port"])}:
                        name, number = service["metadata"]["name"], port["port"]
                        raise Unsupported(f"Service {name} maps {number} to {numbers}")

    # -- running ---------------------------------------------------------------------------
    def record(self, who: str, text: str) -> None:
        with self._lock:
            self.events.append((time.time(), who, text))
        self.log(f"podrunner {time.strftime('%H:%M:%S')} {who}: {text}")

    def start(self) -> Cluster:
        for kind, names in sorted(self.skipped.items()):
            self.record("cluster", f"skipped (not run by this double): {kind} {', '.join(names)}")
        self._create_network()
        threading.Thread(target=self._poll, name="podrunner-poll", daemon=True).start()
        for workload in self.workloads.values():
            threading.Thread(
                target=workload.start, name=f"start-{workload.name}", daemon=True
            ).start()
        return self

    def _create_network(self) -> None:
        """A /24 of 172.31.0.0/16 no other network uses (retried on overlap)."""
        for _ in range(40):
            subnet = f"172.31.{secrets.randbelow(200) + 40}.0/24"
            made = docker("network", "create", "--label", self.label,
                          "--subnet", subnet, self.network, check=False)  # fmt: skip
            if made.returncode == 0:
                self.record("cluster", f"network {self.network} {subnet}")
                return
        raise RuntimeError(f"no free subnet: {made.stderr.decode(errors='replace')}")

    def run_on_network(
        self,
        name: str,
        *options: str,
        command: Iterable[str] = ("sleep", "infinity"),
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """A container of the pause image on the cluster's network (a pod's infra container,
        a name holder, a relay)."""
        entrypoint, *args = command
        return docker("run", "--detach", "--pull", "never", "--name", name, "--label", self.label,
                      "--network", self.network, *options, "--entrypoint", entrypoint,
                      self.pause_image, *args, check=check)  # fmt: skip

    def volume_create(self, name: str, options: list[str] | None = None) -> None:
        docker("volume", "create", "--label", self.label, *(options or []), name)

    def claim(self, name: str, security: Mapping[str, Any] | None = None) -> str:
        """The docker volume of a PersistentVolumeClaim: made once, kept across pods."""
        volume = f"{self.prefix}-pvc-{name}"
        exists = docker("volume", "inspect", volume, check=False).returncode == 0
        if not exists:
            self.volume_create(volume)
            group = (security or {}).get("fsGroup")
            if group is not None:  # fsGroup: the volume's root belongs to the group, setgid
                docker("run", "--rm", "--pull", "never", "--user", "0", "-v", f"{volume}:/v",
                       "--entrypoint", "sh", self.pause_image, "-c",
                       f"chown 0:{group} /v && chmod 2775 /v")  # fmt: skip
        return volume

    def watch(self, container: Container) -> None:
        with self._lock:
            self._watched[container.name] = container

    def _poll(self) -> None:
        """One `docker inspect` a second tells every pod which of its containers exited."""
        while not self.closing.wait(1):
            with self._lock:
                watched = {n: c for n, c in self._watched.items() if c.running}
            if not watched:
                continue
            done = docker("inspect", *watched, check=False)
            states = {
                entry["Name"].lstrip("/"): entry["State"]
                for entry in json.loads(done.stdout or b"[]")
            }
            for name, container in watched.items():
                state = states.get(name)
                if state is None or not state["Running"]:
                    container.exit_code = state["ExitCode"] if state else None
                    container.running = container.ready = False

    def state(self, name: str) -> Obj | None:
        done = docker("inspect", name, check=False)
        entries = json.loads(done.stdout or b"[]")
        return dict(entries[0]["State"]) if entries else None

    def logs(self, name: str, tail: int = 300) -> str:
        done = docker("logs", "--tail", str(tail), name, check=False, timeout=60)
        return (done.stdout + done.stderr).decode(errors="replace")

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(condition, timeout, what, step=0.5, detail=self.describe)

    def describe(self) -> str:
        """A line a live pod: its phase, each container's name:R(unning) or X(exited),
        + ready or - not, and its restarts."""
        lines = []
        for pod in (p for w in self.workloads.values() for p in w.live()):
            states = " ".join(
                f"{c.spec['name']}:{'R' if c.running else 'X'}{'+' if c.ready else '-'}"
                f"x{c.restarts}"
                for c in pod.containers
            )
            lines.append(f"  {pod.name} {pod.phase} {pod.message} {states}")
        return "\n".join(lines)

    # -- what tests ask for ----------------------------------------------------------------
    def pods(self, workload: str) -> list[Pod]:
        return self.workloads[workload].live()

    def pod(self, name: str) -> Pod:
        for workload in self.workloads.values():
            for pod in workload.live():
                if pod.name == name:
                    return pod
        raise LookupError(f"no live pod {name}")

    def wait_ready(
        self, timeout: float, kinds: tuple[str, ...] = ("Deployment", "StatefulSet")
    ) -> None:
        chosen = [w for w in self.workloads.values() if w.kind in kinds]
        self.wait(lambda: all(sum(p.ready for p in w.live()) >= w.replicas for w in chosen),
                  timeout, "every workload ready")  # fmt: skip

    def wait_complete(self, job: str, timeout: float) -> None:
        workload = self.workloads[job]
        self.wait(workload.complete, timeout, f"job {job} complete")

    def jobs(self) -> list[Workload]:
        return [w for w in self.workloads.values() if w.kind == "Job"]

    def delete_pod(self, name: str, grace: float | None = None) -> Pod | None:
        """`kubectl delete pod`: graceful, then the owner's controller replaces it."""
        pod = self.pod(name)
        if pod.owner.kind == "Deployment":
            pod.deleting = True  # terminating pods do not count: the replacement starts now
            replacement = pod.owner.replace(pod)
            pod.delete(grace)
            return replacement
        pod.delete(grace)
        return pod.owner.replace(pod)

    def kill_pod(self, name: str, down_for: float = 0) -> Pod | None:
        """A node crash: the pod's processes SIGKILLed, no hook; its controller replaces it
        once the node has been gone `down_for` seconds (the pod's volumes kept)."""
        pod = self.pod(name)
        pod.kill()
        if self.closing.wait(down_for):
            return None
        return pod.owner.replace(pod)

    def rollout_restart(self, name: str, timeout: float = 600) -> list[Pod]:
        """`kubectl rollout restart deployment/NAME` and wait for it; the new pods."""
        workload = self.workloads[name]
        annotations = workload.template.setdefault("metadata", {}).setdefault("annotations", {})
        annotations["kubectl.kubernetes.io/restartedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ")
        revision = workload.revision()
        old = [p for p in workload.live() if p.labels.get("pod-template-hash") != revision]
        strategy = workload.obj["spec"].get("strategy") or {}
        self.record(name, f"rollout to {revision} ({strategy.get('type', 'RollingUpdate')})")
        if strategy.get("type") == "Recreate":
            parallel(*(pod.delete for pod in old))
            new = [workload.new_pod() for _ in range(workload.replicas)]
        else:
            new = self._rolling(workload, old, strategy.get("rollingUpdate") or {}, timeout)
        self.wait(lambda: all(p.ready for p in new), timeout, f"{name} rolled out")
        return new

    def _rolling(
        self, workload: Workload, old: list[Pod], rolling: Obj, timeout: float
    ) -> list[Pod]:
        def count(value: int | str, rounding: Callable[[float], float]) -> int:
            text = str(value)
            if text.endswith("%"):
                return int(rounding(workload.replicas * float(text[:-1]) / 100))
            return int(text)

        surge = count(rolling.get("maxSurge", "25%"), math.ceil)
        unavailable = count(rolling.get("maxUnavailable", "25%"), math.floor)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        new: list[Pod] = []
        old = list(old)
        deadline = time.monotonic() + timeout
        while old or len(new) < workload.replicas:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout of {workload.name}\n{self.describe()}")
            room = workload.replicas + surge - len(old) - len(new)
            for _ in range(max(0, min(room, workload.replicas - len(new)))):
                new.append(workload.new_pod())
            available = sum(p.ready for p in old) + sum(p.ready for p in new)
            removable = available - (workload.replicas - unavailable)
            for pod in sorted(old, key=lambda p: p.ready)[: max(0, removable)]:
                old.remove(pod)
                pod.deleting = True
                threading.Thread(target=pod.delete, name=f"delete-{pod.name}", daemon=True).start()
            time.sleep(0.5)
        return new

    def port_forward(self, service: str, port: int) -> int:
        """A loopback port on the host relayed to `service:port` on the network."""
        name = f"{self.prefix}-forward-{service}-{port}"
        self.run_on_network(name, "--publish", f"127.0.0.1::{port}",
                            command=("python3", "-c", RELAY, service, str(port)))  # fmt: skip
        published = docker("port", name, f"{port}/tcp").stdout.decode().split()[0]
        self.record("cluster", f"port-forward {published} -> {service}:{port}")
        return int(published.rsplit(":", 1)[1])

    def dump(self) -> str:
        """Events, then every container's log (earlier runs' included), for a failed run."""
        lines = [f"{time.strftime('%H:%M:%S', time.localtime(t))} {who}: {text}"
                 for t, who, text in self.events]  # fmt: skip
        for workload in self.workloads.values():
            for pod in workload.pods:
                for container in [*pod.inits, *pod.containers]:
                    if container.previous_logs:
                        lines += [f"--- {container.name} (earlier run)", container.previous_logs]
                    if pod.phase != "Deleted":
                        lines += [f"--- {container.name}", self.logs(container.name, 3000)]
        return "\n".join(lines)

    def close(self) -> None:
        """Remove every container, volume and the network this cluster made."""
        self.closing.set()
        for workload in self.workloads.values():
            for pod in workload.pods:
                pod.stopping.set()
        for listing, removal in (("ps", ["rm", "--volumes"]), ("volume", ["volume", "rm"])):
            if ids := self._labelled(listing):
                docker(*removal, "--force", *ids, check=False, timeout=300)
        docker("network", "rm", self.network, check=False)

    def _labelled(self, what: str) -> list[str]:
        """Ids of this cluster's containers (ps), volumes or networks."""
        listing = ["ps", "--all"] if what == "ps" else [what, "ls"]
        listed = docker(*listing, "--quiet", "--filter", f"label={self.label}", check=False)
        return listed.stdout.decode().split()

    def leftovers(self) -> list[str]:
        return [f"{what} {i}" for what in ("ps", "volume", "network") for i in self._labelled(what)]
