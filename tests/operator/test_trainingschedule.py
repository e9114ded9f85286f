"""TrainingSchedule on the real control plane: ``@every`` ticks start runs owned by the schedule, history
limits prune, Forbid skips and Replace replaces while a run is active, suspend stops ticks, a restart after
three missed ticks starts exactly ``catchUp`` runs and reports three missed, and no tick ever gets two runs.
Bad schedules are refused by the API server naming the field.

Cheap by design: the schedules of the first test tick side by side under one operator; the history schedule's
runs fail fast on an image that cannot be pulled (their pods never run), the others template ``suspend: true``
runs, which create no pod. (Training itself is the TrainingRun tests' business.)"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubetrain_operator.trainingschedule.schedule import run_name

from tests.conftest import REPO

from .conftest import Operator, Workspace

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

EXAMPLE = REPO / "examples" / "iris-nightly-schedule.yaml"
TICK = "kubetrain.io/scheduled-time"
QUIET = {"KUBETRAIN_PROGRESS_INTERVAL": "3600"}


def schedule(name: str, every: int, **spec: Any) -> dict[str, Any]:
    """The example as ``@every <every>s`` in UTC, with a quick iris template and ``spec`` overrides
    (``suspendRuns=True`` templates runs that stay Suspended: active, no pod)."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": name}
    template = doc["spec"]["runTemplate"]["spec"]
    template["estimator"]["params"] = {"n_estimators": 5}
    template["evaluation"]["cvFolds"] = 0
    template["register"] = {"enabled": False}
    if spec.pop("suspendRuns", False):
        template["suspend"] = True
    if spec.pop("failRuns", False):  # a pod that never runs: Failed/ImagePullFailed after 10 s
        template.update(image="registry.invalid/kubetrain/trainer:0.0.0", startupDeadlineSeconds=10)
    doc["spec"].update({"schedule": f"@every {every}s", "timeZone": "UTC", "concurrencyPolicy": "Allow", **spec})
    doc["spec"].pop("startingDeadlineSeconds")
    return dict(doc)


def children(ws: Workspace, name: str) -> list[dict[str, Any]]:
    items = ws.get("trainingruns", "-l", f"kubetrain.io/schedule={name}")["items"]
    return sorted(items, key=lambda r: r["metadata"]["annotations"][TICK])


def ts(ws: Workspace, name: str) -> dict[str, Any]:
    return dict(ws.get("trainingschedule", name))


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def decision(ws: Workspace, name: str) -> dict[str, Any]:
    return dict((ts(ws, name).get("status") or {}).get("lastDecision") or {})


def reasons(ws: Workspace, name: str) -> list[str]:
    selector = f"involvedObject.kind=TrainingSchedule,involvedObject.name={name}"
    return [e["reason"] for e in ws.get("events", "--field-selector", selector)["items"]]


def event_seen(ws: Workspace, name: str, reason: str, timeout: float = 30) -> bool:
    """An Event ``reason`` on the schedule ``name`` shows up (kopf posts Events in the background, after the
    status write they describe: a read right after the status may not list it yet)."""
    return bool(wait_for(f"a {reason} Event on {name}", lambda: reason in reasons(ws, name), timeout))


def assert_one_run_per_tick(ws: Workspace, name: str, runs: list[dict[str, Any]]) -> None:
    """Each child is named after its tick, owned by the schedule, and no tick has two."""
    uid = ts(ws, name)["metadata"]["uid"]
    ticks = [r["metadata"]["annotations"][TICK] for r in runs]
    assert len(ticks) == len(set(ticks)), ticks
    for run in runs:
        tick = dt.datetime.fromisoformat(run["metadata"]["annotations"][TICK].replace("Z", "+00:00"))
        assert run["metadata"]["name"] == run_name(name, tick)
        (owner,) = run["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingSchedule", uid, True)


def ready(operator: Operator, timeout: float = 60) -> float:
    """Seconds until the operator serves /healthz (its start-up handler ran; the initial listing follows)."""
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/healthz", timeout=2):
                return time.monotonic() - t0
        except OSError:
            assert time.monotonic() - t0 < timeout, f"operator not up after {timeout}s:\n{operator.log_text()[-3000:]}"
            time.sleep(0.2)


def seconds(stamp: str) -> int:
    return int(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def test_ticks_history_forbid_replace_and_suspend(workspace: Workspace, operator_factory: Any) -> None:
    ws = workspace
    operator: Operator = operator_factory(**QUIET)
    ready(operator)
    ws.apply(schedule("every", 15, failedRunsHistoryLimit=1, failRuns=True))
    ws.apply(schedule("forbid", 10, concurrencyPolicy="Forbid", suspendRuns=True))
    ws.apply(schedule("replace", 10, concurrencyPolicy="Replace", suspendRuns=True))
    ws.apply(schedule("pause", 10, suspendRuns=True))
    # Two ticks of "pause", then suspend it: no tick after that.
    wait_for("two runs of pause", lambda: len(children(ws, "pause")) >= 2, 40)
    ws.kubectl("patch", "ts", "pause", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    wait_for("pause suspended", lambda: decision(ws, "pause").get("reason") == "Suspended", 15)
    paused = [r["metadata"]["name"] for r in children(ws, "pause")]

    # "every" starts a run at each tick (each fails fast: its image cannot be pulled); with
    # failedRunsHistoryLimit 1 the first run is deleted once a newer one failed, and only that one stays.
    first = wait_for("the first run of every", lambda: children(ws, "every"), 30)[0]["metadata"]["name"]

    def pruned() -> bool:
        runs = children(ws, "every")
        done = [r for r in runs if (r.get("status") or {}).get("phase") == "Failed"]
        return first not in [r["metadata"]["name"] for r in runs] and len(done) == 1

    wait_for("a second failed run of every, the first one pruned", pruned, 120)
    every = children(ws, "every")
    st = ts(ws, "every")["status"]
    assert seconds(st["nextScheduleTime"]) - seconds(st["lastScheduleTime"]) == 15
    assert seconds(st["lastScheduleTime"]) % 15 == 0
    assert [r for r in every if r["status"].get("phase") == "Failed"][-1]["metadata"]["name"] not in st["active"]
    assert_one_run_per_tick(ws, "every", every)
    assert operator.metric("kubetrain_schedule_ticks_total", decision="started") >= 3 + 2

    # Forbid: the first (Suspended, so never finished) run blocks every later tick.
    forbid = children(ws, "forbid")
    assert len(forbid) == 1, [r["metadata"]["name"] for r in forbid]
    fst = ts(ws, "forbid")["status"]
    assert fst["lastDecision"]["decision"] == "Skipped" and fst["lastDecision"]["reason"] == "ConcurrencyForbid"
    assert fst["active"] == [forbid[0]["metadata"]["name"]]
    assert event_seen(ws, "forbid", "TickSkipped")
    assert operator.metric("kubetrain_schedule_ticks_total", decision="skipped") >= 1

    # Replace: only the newest run is left; the ones before it were deleted at each tick.
    def replaced() -> list[dict[str, Any]] | None:
        runs = [r for r in children(ws, "replace") if not r["metadata"].get("deletionTimestamp")]
        st = ts(ws, "replace").get("status") or {}
        names = [r["metadata"]["name"] for r in runs]
        return runs if len(runs) == 1 and st.get("active") == names else None

    (newest,) = wait_for("replace to keep one run", replaced, 20)
    rst = ts(ws, "replace")["status"]
    assert newest["metadata"]["annotations"][TICK] == rst["lastScheduleTime"]
    assert rst["lastDecision"]["reason"] == "Replaced" and event_seen(ws, "replace", "RunsReplaced")

    # Suspended long enough for two more ticks: nothing new.
    assert [r["metadata"]["name"] for r in children(ws, "pause")] == paused
    assert "nextScheduleTime" not in ts(ws, "pause")["status"]
    out = ws.kubectl("get", "ts").stdout.splitlines()
    assert out[0].split() == ["NAME", "SCHEDULE", "SUSPEND", "LAST", "NEXT", "LAST-DECISION", "AGE"]
    assert any(line.split()[0] == "pause" and "true" in line.split() for line in out[1:]), out


def test_a_restart_after_three_missed_ticks_starts_catch_up_runs_and_reports_three(
    workspace: Workspace, operator_factory: Any
) -> None:
    ws = workspace
    step = 15
    operator: Operator = operator_factory(**QUIET)
    started = ready(operator)
    ws.apply(schedule("catchup", step, catchUp=2, suspendRuns=True))
    last = wait_for("the first tick", lambda: (ts(ws, "catchup").get("status") or {}).get("lastScheduleTime"), 40)
    t0 = seconds(last)
    before = [r["metadata"]["name"] for r in children(ws, "catchup")]
    assert before[-1] == run_name("catchup", dt.datetime.fromtimestamp(t0, dt.UTC))
    operator.kill()  # like a crashed pod
    # Ticks t0+15, t0+30 and t0+45 pass while nobody watches; the operator is back just after t0+45 (started
    # earlier by most of the start-up time the first one took: seconds on an idle machine, 15-20 s when busy).
    time.sleep(max(0.0, t0 + 3 * step + 2 - 0.7 * started - time.time()))
    restart = time.time()
    operator.start(**QUIET)
    print(f"operator #1 ready after {started:.1f}s, #2 after {ready(operator):.1f}s")

    def caught_up() -> dict[str, Any] | None:
        st = ts(ws, "catchup").get("status") or {}
        return st if (st.get("missed") or {}).get("count") else None

    st = wait_for("the catch-up", caught_up, 40)
    seen = time.time()
    missed = st["missed"]
    # Normally the new operator's first pass comes before t0+60 (3 missed); on a machine so loaded that it
    # does not, every tick up to that pass counts — the rules below hold either way.
    ticks = (seconds(missed["time"]) - t0) // step
    if ticks != 3:
        print(f"the first pass after the restart came {seconds(missed['time']) - t0 - 3 * step}s after t0+45")
    assert (restart - t0) // step <= ticks <= (seen - t0) // step
    assert (missed["count"], missed["started"], missed["capped"]) == (ticks, 2, False), missed
    assert seconds(missed["first"]) == t0 + step and seconds(missed["last"]) == t0 + ticks * step
    assert seconds(st["lastScheduleTime"]) == t0 + ticks * step
    runs = children(ws, "catchup")
    new = [seconds(r["metadata"]["annotations"][TICK]) for r in runs if r["metadata"]["name"] not in before]
    assert new == [t0 + (ticks - 1) * step, t0 + ticks * step], (t0, new)  # exactly catchUp, the newest
    assert event_seen(ws, "catchup", "MissedTicks")
    # The next tick is an ordinary one: one run, nothing duplicated, the missed report stays.
    count = len(runs)
    runs = wait_for("the next tick", lambda: (lambda r: r if len(r) > count else None)(children(ws, "catchup")), 30)
    assert_one_run_per_tick(ws, "catchup", runs)
    assert ts(ws, "catchup")["status"]["missed"]["count"] == ticks
    assert operator.metric("kubetrain_schedule_ticks_total", decision="missed") == ticks


BAD = [
    ("invalid-cron", {"schedule": "61 * * * *"}, "spec.schedule"),
    ("four-fields", {"schedule": "0 2 * *"}, "spec.schedule"),
    ("every-1s", {"schedule": "@every 1s"}, "@every must be at least 10s"),
    ("unknown-zone", {"timeZone": "Mars/Olympus"}, "spec.timeZone"),
    ("bad-policy", {"concurrencyPolicy": "Sometimes"}, "spec.concurrencyPolicy"),
    # spec.when (the gates)
    (
        "drift-zero-threshold",
        {"when": {"drift": {"threshold": 0, "against": "production"}}},
        "spec.when.drift.threshold",
    ),
    (
        "drift-negative-threshold",
        {"when": {"drift": {"threshold": -1, "against": "production"}}},
        "spec.when.drift.threshold",
    ),
    ("drift-no-alias", {"when": {"drift": {"threshold": 0.2}}}, "spec.when.drift.against"),
    ("drift-bad-alias", {"when": {"drift": {"threshold": 0.2, "against": "Prod_1"}}}, "spec.when.drift.against"),
    ("data-changed-not-bool", {"when": {"dataChanged": "sometimes"}}, "spec.when.dataChanged"),
    ("unknown-gate", {"when": {"dataChange": True}}, "dataChange"),
]


@pytest.mark.parametrize(("case", "changes", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_schedules_are_refused_by_the_api_server(
    workspace: Workspace, case: str, changes: dict[str, Any], field: str
) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"].update(changes)
    proc = workspace.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0, f"{case} was accepted"
    assert field in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("estimator.name", "nope", "spec.runTemplate.spec.estimator.name"),
        ("task", "regression", "spec.runTemplate.spec.evaluation.thresholds"),
        ("dataset.uri", "ftp://x/y.csv", "spec.runTemplate.spec.dataset.uri"),
        ("model", None, "spec.runTemplate.spec.model"),
        # a promote metric the template's task does not compute (r2 of a classification)
        ("register.promote", {"alias": "production", "metric": "r2"}, "spec.runTemplate.spec.register.promote.metric"),
    ],
)
def test_a_template_that_is_not_a_valid_trainingrun_spec_is_refused(
    workspace: Workspace, path: str, value: Any, field: str
) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    node = doc["spec"]["runTemplate"]["spec"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    if value is None:
        node.pop(last)
    else:
        node[last] = copy.deepcopy(value)
    proc = workspace.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0 and field in proc.stderr, proc.stderr
