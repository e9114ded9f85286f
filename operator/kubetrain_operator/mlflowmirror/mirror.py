"""The mirror's reads (``gather``) and writes (``act``) around the pure ``decide``: the only MLflow I/O.

``gather`` never raises for MLflow: a server that is down, refuses the credentials or is not MLflow becomes
a ``TargetState`` with an error (the ModelVersion pass goes on: phases and aliases never wait for MLflow).
While a server is backed off it is not contacted at all. ``act`` runs the planned writes in order and, on
the first failure, remembers it for the next pass (which reports it and backs off) and stops.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kubetrain_trainer import contract

from .. import kube
from ..settings import Settings
from . import decide as md
from .client import Credentials, MlflowError, Registry

log = logging.getLogger("kubetrain.mlflowmirror")


async def gather(
    namespace: str,
    model: str,
    objs: list[dict[str, Any]],
    runs: Mapping[str, dict[str, Any] | None],
    memory: Mapping[str, Any],
    settings: Settings,
    now: dt.datetime,
) -> md.MirrorFacts:
    """Targets of the versions, their runs' MLflow links, and each server's registry state of ``model``.
    ``runs``: version name → its producing TrainingRun (as read for lineage; None when gone)."""
    facts = md.MirrorFacts()
    for obj in objs:
        name = obj["metadata"]["name"]
        run = runs.get(name)
        target = md.target_of(obj, run, settings)
        if target is None:
            continue
        facts.targets[name] = target
        facts.runs[name] = md.run_link(obj, run, target, settings)
    by_uri: dict[str, md.Target] = {}
    for target in facts.targets.values():
        by_uri.setdefault(target.uri, target)
    for uri, target in sorted(by_uri.items()):
        facts.states[uri] = await _read(model, target, memory, settings, now)
    return facts


async def _read(
    model: str, target: md.Target, memory: Mapping[str, Any], settings: Settings, now: dt.datetime
) -> md.TargetState:
    remembered = md.backing_off(memory, target.uri, now)
    if remembered is not None:
        return md.TargetState(target.uri, error=remembered, skipped=True)
    try:
        credentials = await credentials_of(target)
        async with Registry(target.uri, credentials, settings.mlflow_timeout) as registry:
            found = await registry.registered_model(model)
    except MlflowError as exc:
        log.info("MLflow %s: %s", target.uri, exc.message)
        return md.TargetState(target.uri, error=(exc.reason, exc.message))
    versions = [md.MirrorVersion(v.version, v.source, v.run_id, v.tags) for v in found.versions]
    return md.TargetState(target.uri, exists=found.exists, aliases=found.aliases, versions=versions)


async def credentials_of(target: md.Target) -> Credentials | None:
    """The first of the target's Secrets that holds MLflow credentials (an explicitly named Secret must
    exist and hold them)."""
    for index, (namespace, name) in enumerate(target.secrets):
        where = f"Secret {namespace}/{name}"
        try:
            data = await kube.get_secret_data(namespace, name)
        except Exception as exc:  # RBAC: the operator may read Secrets only where the chart allows
            if index == 0 and target.explicit:
                raise MlflowError(contract.TRACKING_REASON_REFUSED, f"cannot read {where}: {exc}") from exc
            continue
        if data is None:
            if index == 0 and target.explicit:
                raise MlflowError(contract.TRACKING_REASON_REFUSED, f"{where} (spec.tracking.mlflow) not found")
            continue
        found = Credentials.from_data(data, where)
        if found is not None:
            return found
        if index == 0 and target.explicit:
            raise MlflowError(
                contract.TRACKING_REASON_REFUSED,
                f"{where} has neither MLFLOW_TRACKING_TOKEN nor MLFLOW_TRACKING_USERNAME and _PASSWORD",
            )
    return None


async def act(
    plan: md.MirrorPlan,
    facts: md.MirrorFacts,
    memory: dict[str, Any],
    settings: Settings,
    now: dt.datetime,
) -> bool:
    """Run the planned writes, server by server; False (and the failure remembered) when one failed."""
    ok = True
    for uri in sorted({a.uri for a in plan.actions}):
        actions = [a for a in plan.actions if a.uri == uri]
        target = next(t for t in facts.targets.values() if t.uri == uri)
        try:
            credentials = await credentials_of(target)
            async with Registry(uri, credentials, settings.mlflow_timeout) as registry:
                for action in actions:
                    log.info("MLflow %s: %s%s", uri, action.op, action.args[:3])
                    await getattr(registry, action.op)(*action.args)
        except MlflowError as exc:
            log.warning("MLflow %s: %s", uri, exc.message)
            memory[md.MEM_MLFLOW] = md.failure_memory(memory, uri, exc.reason, exc.message, settings, now)
            ok = False
        else:
            memory[md.MEM_MLFLOW] = {k: v for k, v in (memory.get(md.MEM_MLFLOW) or {}).items() if k != uri}
    return ok
