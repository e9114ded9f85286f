"""The ModelVersion's child Jobs (verification, cleanup), built by pure functions of (version, settings).
Both run the trainer image as the one restricted pod of ``k8s``; their labels and names are deterministic."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from kubetrain_trainer import contract

from .. import k8s
from ..settings import Settings
from .status import artifact_dir

COMPONENT_VERIFY = "verify"
COMPONENT_CLEANUP = "cleanup"
#: The name part of a promotion-time check Job (a verification Job like the others: same pod, same labels).
COMPONENT_CHECK = "check"
#: kubetrain.io/component → app.kubernetes.io/component of the child (never "trainer": those are runs').
_APP_COMPONENT = {COMPONENT_VERIFY: k8s.COMPONENT_VERIFY, COMPONENT_CLEANUP: k8s.COMPONENT_CLEANUP}
VERIFY_DEADLINE_SECONDS = 600
CLEANUP_DEADLINE_SECONDS = 300
JOB_TTL_SECONDS = 24 * 3600
NAME_BUDGET = 63
CLEANUP_SCRIPT = "import shutil, sys\nshutil.rmtree(sys.argv[1], ignore_errors=True)\nprint('removed', sys.argv[1])\n"
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


def child_job_name(mv_name: str, component: str, *parts: str) -> str:
    """``<mv name>-<component>-<hash>`` within 63 characters; the hash covers ``parts``."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]
    suffix = f"-{component}-{digest}"
    return mv_name[: NAME_BUDGET - len(suffix)].rstrip("-") + suffix


def child_labels(mv: Mapping[str, Any], component: str) -> dict[str, str]:
    return k8s.child_labels(
        _APP_COMPONENT[component],
        **{
            k8s.LABEL_KUBETRAIN_COMPONENT: component,
            k8s.LABEL_MODEL: mv["spec"]["model"],
            k8s.LABEL_MODEL_VERSION: mv["metadata"]["name"],
        },
    )


def _job(mv: Mapping[str, Any], name: str, component: str, pod_spec: dict[str, Any], deadline: int) -> dict[str, Any]:
    labels = child_labels(mv, component)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": mv["metadata"].get("namespace"),
            "labels": dict(labels),
            "ownerReferences": [k8s.owner_reference("ModelVersion", mv["metadata"])],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "podFailurePolicy": k8s.fail_fast_policy(component),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def verify_job_name(mv: Mapping[str, Any]) -> str:
    """Deterministic: one verification Job per ModelVersion object (uid) and artifact."""
    art = mv["spec"]["artifact"]
    return child_job_name(mv["metadata"]["name"], COMPONENT_VERIFY, mv["metadata"]["uid"], art["uri"], art["sha256"])


def check_job_name(mv: Mapping[str, Any], alias: str, claim: str) -> str:
    """Deterministic: one promotion-time check Job per (version, alias, claim, artifact)."""
    art = mv["spec"]["artifact"]
    return child_job_name(
        mv["metadata"]["name"], COMPONENT_CHECK, mv["metadata"]["uid"], alias, claim, art["uri"], art["sha256"]
    )


def build_verify_job(mv: Mapping[str, Any], settings: Settings, name: str | None = None) -> dict[str, Any]:
    """The Job that runs ``python -m kubetrain_trainer verify`` on an artifact the operator cannot trust.

    pvc:// artifacts: the claim is mounted read-only at ``<pvc mount root>/<claim>`` and
    ``KUBETRAIN_VERIFY_URI`` is ``file://`` + the mounted path of the file. Other schemes pass the URI
    unchanged; their credentials come from ``spec.envFrom`` / ``spec.serviceAccountName`` (as for a trainer:
    the explicit ``KUBETRAIN_*`` variables win over envFrom keys, and the token is mounted only with a
    ServiceAccount).
    """
    spec = mv["spec"]
    uri, sha = spec["artifact"]["uri"], spec["artifact"]["sha256"]
    command = list(contract.VERIFY_COMMAND)
    pvc = k8s.pvc_mount(uri, settings.pvc_mount_root)
    volumes = [k8s.Volume("artifact", pvc[0], pvc[1], True)] if pvc else []
    env = [
        {"name": contract.ENV_VERIFY_URI, "value": f"file://{pvc[2]}" if pvc else uri},
        {"name": contract.ENV_VERIFY_SHA256, "value": sha},
    ]
    env_from = {"envFrom": [dict(e) for e in spec["envFrom"]]} if spec.get("envFrom") else {}
    container = k8s.restricted_container(
        COMPONENT_VERIFY, settings.trainer_image, settings.image_pull_policy,
        command=command, env=env, **env_from, resources=RESOURCES,
    )  # fmt: skip
    pod = k8s.restricted_pod_spec(container, volumes, spec.get("serviceAccountName"), tmp_size="1Gi")
    return _job(mv, name or verify_job_name(mv), COMPONENT_VERIFY, pod, VERIFY_DEADLINE_SECONDS)


def cleanup_target(mv: Mapping[str, Any], others: Iterable[Mapping[str, Any]] = ()) -> str | None:
    """The artifact directory a ``deletionPolicy: Delete`` cleanup removes, or None when it must not:
    not a pvc:// artifact, the claim's root, or a directory another ModelVersion still uses."""
    uri = mv["spec"]["artifact"]["uri"]
    if not uri.startswith("pvc://"):
        return None
    directory = artifact_dir(uri)
    if "/" not in directory.removeprefix("pvc://").strip("/"):
        return None
    for other in others:
        if (other.get("metadata") or {}).get("uid") == mv["metadata"].get("uid"):
            continue
        other_uri = ((other.get("spec") or {}).get("artifact") or {}).get("uri", "")
        if other_uri and (artifact_dir(other_uri) == directory or other_uri.startswith(directory + "/")):
            return None
    return directory


def cleanup_job_name(mv: Mapping[str, Any], directory: str) -> str:
    return child_job_name(mv["metadata"]["name"], COMPONENT_CLEANUP, mv["metadata"]["uid"], directory)


def build_cleanup_job(mv: Mapping[str, Any], settings: Settings, directory: str) -> dict[str, Any]:
    """The Job that removes a pvc:// artifact directory (``cleanup_target``) — no shell: the path is an
    argument of a fixed Python snippet."""
    claim, mount, path = k8s.pvc_mount(directory, settings.pvc_mount_root) or ("", "", "")
    container = k8s.restricted_container(
        COMPONENT_CLEANUP, settings.trainer_image, settings.image_pull_policy,
        command=["python", "-c", CLEANUP_SCRIPT, path], env=[], resources=RESOURCES,
    )  # fmt: skip
    pod = k8s.restricted_pod_spec(container, [k8s.Volume("artifact", claim, mount, False)], None, tmp_size="1Gi")
    job = _job(mv, cleanup_job_name(mv, directory), COMPONENT_CLEANUP, pod, CLEANUP_DEADLINE_SECONDS)
    # The ModelVersion is being deleted: a blocking ownerReference would only add a foreground-deletion
    # dependency. The reference still lets the garbage collector remove the Job after the ModelVersion.
    job["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = False
    return job
