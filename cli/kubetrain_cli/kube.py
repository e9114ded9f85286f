"""The plugin's only contact with the API: a lightkube client built from the user's kubeconfig."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Pod
from lightkube.types import PatchType

from .core import (
    COMPONENT_LABEL,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    GROUP,
    RUN_LABEL,
    TRAINER_COMPONENT,
    TRAINER_CONTAINER,
    VERSION,
    PluginError,
)

TrainingRun = create_namespaced_resource(GROUP, VERSION, "TrainingRun", "trainingruns")
ModelVersion = create_namespaced_resource(GROUP, VERSION, "ModelVersion", "modelversions")
KUEUE_WORKLOADS = [
    create_namespaced_resource("kueue.x-k8s.io", v, "Workload", "workloads") for v in ("v1beta2", "v1beta1")
]
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
FIELD_MANAGER = "kubectl-kubetrain"
_NOT_SERVED = f"the API server does not serve {GROUP}/{VERSION}: are the kubetrain CRDs installed?"
KIND_NAMES = {"TrainingRun": "trainingrun", "ModelVersion": "modelversion"}


def load_config(kubeconfig: str | None, context: str | None) -> KubeConfig:
    """kubectl's order: --kubeconfig, then $KUBECONFIG (its first existing file), then ~/.kube/config, then
    the in-cluster service account."""
    candidates: list[str] = []
    if kubeconfig:
        if not Path(kubeconfig).expanduser().exists():
            raise PluginError(f"kubeconfig {kubeconfig} does not exist", EXIT_ERROR)
        candidates = [kubeconfig]
    elif os.environ.get("KUBECONFIG"):
        candidates = [p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    candidates.append(str(Path("~/.kube/config").expanduser()))
    for path in candidates:
        if Path(path).expanduser().exists():
            try:
                return KubeConfig.from_file(Path(path).expanduser())
            except ConfigError as exc:
                raise PluginError(f"kubeconfig {path}: {exc}") from exc
    try:
        return KubeConfig.from_service_account()
    except ConfigError as exc:
        raise PluginError("no kubeconfig found (set KUBECONFIG or pass --kubeconfig)") from exc


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an API failure: lightkube's ApiError carries a Status; an unknown API group's
    404 ("404 page not found", no Status body) surfaces as the transport's HTTPStatusError."""
    if isinstance(exc, ApiError):
        return int(exc.status.code or 0) or None
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None


class Conflict(PluginError):
    """The object changed since it was read (resourceVersion precondition failed)."""


class Api:
    """Typed-enough access to the objects the plugin reads and the one field it writes (spec.aliases)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None):
        config = load_config(kubeconfig, context)
        try:
            single = config.get(context_name=context)
        except ConfigError as exc:
            raise PluginError(f"context {context!r}: {exc}") from exc
        if single is None:
            raise PluginError(f"context {context!r} is not in the kubeconfig")
        self.namespace = namespace or single.namespace or "default"
        self.client = Client(config=single, namespace=self.namespace, field_manager=FIELD_MANAGER)

    # -- reads --------------------------------------------------------------------------------------------

    def _get(self, resource: Any, name: str, kind: str) -> dict[str, Any]:
        try:
            return dict(self.client.get(resource, name, namespace=self.namespace).to_dict())
        except ApiError as exc:
            if exc.status.code == 404:
                raise PluginError(f"{kind} {name} not found in namespace {self.namespace}", EXIT_NOT_FOUND) from exc
            raise PluginError(f"cannot read {kind} {name}: {exc.status.message}") from exc
        except Exception as exc:
            if status_code(exc) == 404:
                raise PluginError(_NOT_SERVED, EXIT_NOT_FOUND) from exc
            raise

    def model_version(self, name: str) -> dict[str, Any]:
        return self._get(ModelVersion, name, "ModelVersion")

    def training_run(self, name: str) -> dict[str, Any]:
        return self._get(TrainingRun, name, "TrainingRun")

    def model_versions(self) -> list[dict[str, Any]]:
        return self._list(ModelVersion, "ModelVersions")

    def _list(self, resource: Any, what: str, **kwargs: Any) -> list[dict[str, Any]]:
        try:
            return [dict(o.to_dict()) for o in self.client.list(resource, namespace=self.namespace, **kwargs)]
        except ApiError as exc:
            raise PluginError(f"cannot list {what} in {self.namespace}: {exc.status.message}") from exc
        except Exception as exc:
            if status_code(exc) == 404:
                raise PluginError(_NOT_SERVED, EXIT_NOT_FOUND) from exc
            raise

    def trainer_pods(self, run: str) -> list[dict[str, Any]]:
        return self._list(Pod, "pods", labels={RUN_LABEL: run, COMPONENT_LABEL: TRAINER_COMPONENT})

    def job(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.get(Job, name, namespace=self.namespace).to_dict())
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise PluginError(f"cannot read Job {name}: {exc.status.message}") from exc

    def events_for(self, names: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in names:
            out += self._list(Event, "events", fields={"involvedObject.name": name})
        return out

    def workload_message(self, job_uid: str) -> str | None:
        """The Kueue Workload's QuotaReserved condition (message when False, 'admitted' when True); None when
        Kueue is absent or the Workload is not readable."""
        for resource in KUEUE_WORKLOADS:
            try:
                items = [
                    o.to_dict()
                    for o in self.client.list(resource, namespace=self.namespace, labels={KUEUE_JOB_UID_LABEL: job_uid})
                ]
            except Exception as exc:  # lightkube passes on the transport's HTTPStatusError for a bare 404
                if status_code(exc) == 404:
                    continue  # this API version (or Kueue itself) is not served
                return None
            for workload in items:
                for cond in (workload.get("status") or {}).get("conditions") or ():
                    if cond.get("type") == "QuotaReserved":
                        if cond.get("status") == "True":
                            return f"quota reserved: {cond.get('message') or 'admitted'}"
                        return f"QuotaReserved=False: {cond.get('reason', '')}: {cond.get('message', '')}"
            return None
        return None

    def log(self, pod: str, *, follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        try:
            yield from self.client.log(
                pod, namespace=self.namespace, container=TRAINER_CONTAINER, follow=follow, tail_lines=tail_lines
            )
        except ApiError as exc:
            raise PluginError(f"cannot read the log of pod {pod}: {exc.status.message}") from exc

    # -- the one write --------------------------------------------------------------------------------------

    def patch_aliases(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of spec.aliases (what ``kubectl patch --type=merge`` sends)."""
        try:
            obj = self.client.patch(ModelVersion, name, patch, namespace=self.namespace, patch_type=PatchType.MERGE)
        except ApiError as exc:
            if exc.status.code == 409:
                raise Conflict(f"ModelVersion {name} changed while patching") from exc
            if exc.status.code == 404:
                raise PluginError(
                    f"ModelVersion {name} not found in namespace {self.namespace}", EXIT_NOT_FOUND
                ) from exc
            raise PluginError(f"cannot patch ModelVersion {name}: {exc.status.message}") from exc
        return dict(obj.to_dict())
