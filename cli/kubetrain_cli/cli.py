"""``kubectl kubetrain`` commands. Each reads through ``kube.Api``, computes with ``core`` and prints a
table (default) or ``-o json|yaml``. Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 alias refused,
5 timeout, 6 the alias went elsewhere."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import yaml

from . import core
from .core import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_TIMEOUT, PluginError
from .kube import Api, Conflict

OUTPUTS = ("table", "json", "yaml")
TERMINAL = ("Succeeded", "Failed")


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--kubeconfig/--context/-n/-o, accepted before or after the command name (kubectl style)."""

    @click.option("--kubeconfig", default=None, help="Path to the kubeconfig (default: $KUBECONFIG, ~/.kube/config).")
    @click.option("--context", default=None, help="The kubeconfig context to use.")
    @click.option("-n", "--namespace", default=None, help="Namespace (default: the context's namespace).")
    @click.option("-o", "--output", type=click.Choice(OUTPUTS), default=None, help="Output format.")
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        kubeconfig: str | None,
        context: str | None,
        namespace: str | None,
        output: str | None,
        **kwargs: Any,
    ) -> Any:
        ctx = click.get_current_context()
        opts = ctx.ensure_object(dict)
        for key, value in (
            ("kubeconfig", kubeconfig),
            ("context", context),
            ("namespace", namespace),
            ("output", output),
        ):
            if value is not None:
                opts[key] = value
        return fn(*args, **kwargs)

    return wrapper


def _api() -> Api:
    opts = click.get_current_context().ensure_object(dict)
    return Api(opts.get("kubeconfig"), opts.get("context"), opts.get("namespace"))


def _output() -> str:
    return str(click.get_current_context().ensure_object(dict).get("output") or "table")


def _emit(doc: Any, table: Callable[[], str]) -> None:
    fmt = _output()
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())
    else:
        click.echo(table())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_common
def cli() -> None:
    """kubetrain's kubectl plugin: compare, promote and roll back ModelVersions; explain and tail TrainingRuns."""


@cli.command()
@click.argument("versions", nargs=-1, required=True)
@click.option("--diff", "only_differences", is_flag=True, help="Show only the fields that differ.")
@_common
def compare(versions: tuple[str, ...], only_differences: bool) -> None:
    """Metrics, params, dataset, signature and lineage of ModelVersions side by side (* marks differences)."""
    if len(versions) < 2:
        raise PluginError("compare needs at least two ModelVersions", core.EXIT_USAGE)
    api = _api()
    objs = [api.model_version(v) for v in versions]
    rows = core.compare_rows(objs)
    _emit(core.compare_document(versions, rows), lambda: core.compare_table(versions, rows, only_differences))


def _wait(
    api: Api, name: str, alias: str, generation: int, timeout: float, superseded_is_final: bool = True
) -> tuple[core.AliasOutcome, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        obj = api.model_version(name)
        outcome = core.alias_outcome(obj, alias, generation)
        if outcome.state not in ("pending", "superseded") or (outcome.state == "superseded" and superseded_is_final):
            return outcome, obj
        if time.monotonic() > deadline:
            raise PluginError(
                f"timed out after {timeout:g}s waiting for {name} to hold {alias}: {outcome.message}", EXIT_TIMEOUT
            )
        time.sleep(0.5)


def _wait_released(api: Api, model: str, alias: str, keeper: str, timeout: float) -> list[dict[str, Any]]:
    """Wait until no version but ``keeper`` holds ``alias`` in status; returns the model's versions."""
    deadline = time.monotonic() + timeout
    while True:
        versions = core.versions_of(api.model_versions(), model)
        others = [
            core.name_of(v)
            for v in versions
            if core.name_of(v) != keeper and alias in (core.status_of(v).get("aliases") or ())
        ]
        if not others:
            return versions
        if time.monotonic() > deadline:
            raise PluginError(f"timed out after {timeout:g}s: {', '.join(others)} still hold {alias}", EXIT_TIMEOUT)
        time.sleep(0.5)


def _claim(api: Api, obj: dict[str, Any], edit: Callable[[list[str]], list[str]], attempts: int = 5) -> int:
    """Patch spec.aliases of ``obj`` to ``edit(current aliases)``; the generation the operator must observe.
    The patch is guarded by resourceVersion; on a conflict (the operator wrote status meanwhile) the object
    is read again and the edit re-applied."""
    for attempt in range(attempts):
        aliases = list((obj.get("spec") or {}).get("aliases") or ())
        try:
            patched = api.patch_aliases(core.name_of(obj), core.aliases_patch(obj, edit(aliases)))
            return int(patched["metadata"].get("generation") or 0)
        except Conflict:
            if attempt == attempts - 1:
                raise
            obj = api.model_version(core.name_of(obj))
    raise AssertionError("unreachable")


def _move(api: Api, target: dict[str, Any], alias: str, timeout: float, verb: str, why: str = "") -> None:
    """Make ``target`` hold ``alias`` by editing spec.aliases, then report what status shows."""
    name = core.name_of(target)
    model = str(target["spec"]["model"])
    versions = core.versions_of(api.model_versions(), model)
    before = core.holder(versions, alias)
    before_name = core.name_of(before) if before else None
    spec_aliases = list(target["spec"].get("aliases") or ())
    started = time.monotonic()
    if before_name == name:
        outcome = core.AliasOutcome("held", f"{name} already holds {alias}")
    else:
        fresh_claim = alias not in spec_aliases
        if fresh_claim:
            generation = _claim(api, target, lambda a: core.with_alias(a, alias))  # a new claim: the newest wins
        else:
            # target claims it already but a newer claim beats it: withdraw the current holder's claim.
            generation = int(target["metadata"].get("generation") or 0)
            if before is not None and alias in (before["spec"].get("aliases") or ()):
                _claim(api, before, lambda a: core.without_alias(a, alias))
        outcome, _ = _wait(api, name, alias, generation, timeout, superseded_is_final=fresh_claim)
    if outcome.state == "refused":
        if alias not in spec_aliases:  # withdraw the refused claim: the alias stays where it was
            _claim(api, api.model_version(name), lambda a: core.without_alias(a, alias))
        held = f"; {alias} stays with {before_name}" if before_name else ""
        raise PluginError(f"{verb} refused: {outcome.message}{held}", EXIT_REFUSED)
    if outcome.state == "superseded":
        raise PluginError(f"{alias} went elsewhere: {outcome.message}", EXIT_FAILED)
    # the alias moved: withdraw the old holder's claim too (what a tidy user does), then wait until it lets go
    for v in core.versions_of(api.model_versions(), model):
        if core.name_of(v) != name and alias in (v["spec"].get("aliases") or ()):
            _claim(api, v, lambda a: core.without_alias(a, alias))
    versions = _wait_released(api, model, alias, name, max(1.0, timeout - (time.monotonic() - started)))
    final = next(v for v in versions if core.name_of(v) == name)
    if alias not in (core.status_of(final).get("aliases") or ()):
        now_holder = core.holder(versions, alias)
        raise PluginError(
            f"{alias} is held by {core.name_of(now_holder) if now_holder else 'no version'}, not {name}", EXIT_FAILED
        )
    doc = {
        "model": model,
        "alias": alias,
        "version": name,
        "previousHolder": before_name,
        "outcome": "unchanged" if before_name == name else "moved",
        "reason": why or None,
        "history": core.alias_events(versions, alias)[-5:],
    }
    _emit(
        doc,
        lambda: (
            (
                f"{alias}: {name} already holds it"
                if before_name == name
                else f"{alias}: {before_name or '(none)'} → {name}"
            )
            + (f" ({why})" if why else "")
        ),
    )


@cli.command()
@click.argument("version")
@click.argument("alias")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the operator.")
@_common
def promote(version: str, alias: str, timeout: float) -> None:
    """Give ALIAS to the ModelVersion VERSION (adds it to spec.aliases), wait until status shows the move
    or the refusal; the previous holder's claim is withdrawn."""
    api = _api()
    _move(api, api.model_version(version), alias, timeout, f"promote {version} to {alias}")


@cli.command()
@click.argument("model")
@click.argument("alias")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the operator.")
@_common
def rollback(model: str, alias: str, timeout: float) -> None:
    """Return ALIAS of MODEL to its previous holder (from the versions' status.aliasHistory)."""
    api = _api()
    versions = core.versions_of(api.model_versions(), model)
    if not versions:
        raise PluginError(f"model {model} has no ModelVersions in namespace {api.namespace}", EXIT_NOT_FOUND)
    target, why = core.rollback_target(versions, alias)
    if target is None:
        raise PluginError(f"cannot roll back {alias} of {model}: {why}", EXIT_NOT_FOUND)
    _move(api, target, alias, timeout, f"rollback of {alias} to {core.name_of(target)}", why)


@cli.command()
@click.argument("model")
@_common
def history(model: str) -> None:
    """Versions of MODEL and every alias move, oldest first."""
    api = _api()
    versions = core.versions_of(api.model_versions(), model)
    if not versions:
        raise PluginError(f"model {model} has no ModelVersions in namespace {api.namespace}", EXIT_NOT_FOUND)
    doc = core.history_document(model, versions)
    _emit(doc, lambda: core.history_tables(doc))


@cli.command()
@click.argument("run")
@click.option("--tail", default=20, show_default=True, help="Log lines to show.")
@_common
def why(run: str, tail: int) -> None:
    """Why RUN is pending, queued, failed or done: phase, failure, conditions, Events of the run, its Job
    and pods, Kueue's QuotaReserved message and the log tail."""
    api = _api()
    obj = api.training_run(run)
    st = core.status_of(obj)
    pods = core.pod_order(api.trainer_pods(run))
    job_name = st.get("jobName")
    job = api.job(job_name) if job_name else None
    names = [run] + ([job_name] if job_name else []) + [core.name_of(p) for p in pods]
    events = api.events_for(names)
    kueue = api.workload_message(job["metadata"]["uid"]) if job else None
    log_tail = (st.get("failure") or {}).get("logTail")
    started = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
    if not log_tail and started and tail > 0:
        try:
            log_tail = "".join(api.log(core.name_of(started[-1]), tail_lines=tail)) or None
        except PluginError:
            log_tail = None
    doc = core.explain_run(obj, events, pods, kueue, log_tail)
    _emit(doc, lambda: core.explain_text(doc))


@cli.command()
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Follow the log until the run finishes (retries included).")
@_common
def logs(run: str, follow: bool) -> None:
    """The trainer's log of RUN: every pod (retries, Indexed search pods) in order, each under a header."""
    api = _api()
    obj = api.training_run(run)
    done: set[str] = set()
    while True:
        pods = core.pod_order(api.trainer_pods(run))
        for pod in pods:
            pname, phase = core.name_of(pod), (pod.get("status") or {}).get("phase")
            if pname in done or phase == "Pending":
                continue
            index = ((pod.get("metadata") or {}).get("annotations") or {}).get(
                "batch.kubernetes.io/job-completion-index"
            )
            label = f"index {index}, " if index is not None else ""
            click.echo(f"==> {pname} ({label}{phase}) <==")
            live = follow and phase == "Running"
            for line in api.log(pname, follow=live):
                click.echo(line, nl=False)
            done.add(pname)
        if not follow:
            break
        obj = api.training_run(run)
        if core.status_of(obj).get("phase") in TERMINAL and all(
            core.name_of(p) in done for p in pods if (p.get("status") or {}).get("phase") != "Pending"
        ):
            break
        time.sleep(1)
    if not done:
        tail = (core.status_of(obj).get("failure") or {}).get("logTail")
        if tail:
            click.echo(f"(no trainer pods left; the log tail kept in {run}'s status:)")
            click.echo(tail.rstrip())
            return
        phase = core.status_of(obj).get("phase") or "Pending"
        raise PluginError(f"run {run} has no trainer pod with a log (phase {phase})", EXIT_NOT_FOUND)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``kubectl-kubetrain``: errors become one line on stderr and the exit code."""
    try:
        cli.main(args=argv, prog_name="kubectl kubetrain", standalone_mode=False)
    except PluginError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # transport errors (refused connection, TLS) and the like
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(core.EXIT_ERROR)
    sys.exit(0)
