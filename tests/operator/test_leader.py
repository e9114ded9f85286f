"""Leader election on the dev cluster: two operator processes (the ``Operator`` subprocess of conftest.py)
compete for one Lease in the test namespace. Exactly one leads (Lease holder, ``/leader``, the
``kubetrain_leader`` gauge) and a run gets exactly one Job; after ``kill -9`` of the leader the standby takes
over within 20 s (lease 15 s + a look every 2 s) and a new run gets its Job; both ``/leader`` endpoints are
polled every 0.2 s throughout and are never both 200."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until

from .conftest import Operator, Workspace, iris_run

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

LEASE = "kubetrain-operator"
TAKEOVER_BOUND = 20.0


def leader_status(op: Operator) -> tuple[int, dict[str, Any]]:
    """(HTTP status of /leader, its JSON body); (0, {}) when the process does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/leader", timeout=1) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def http_status(op: Operator, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class LeaderPoller:
    """Both /leader endpoints every 0.2 s in a thread; remembers every moment both said 200."""

    def __init__(self, ops: list[Operator]) -> None:
        self.ops = ops
        self.samples = 0
        self.both: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            codes = [leader_status(op)[0] for op in self.ops]
            self.samples += 1
            if codes.count(200) > 1:
                self.both.append(time.monotonic())
            self._stop.wait(0.2)

    def __enter__(self) -> LeaderPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def two_operators(workspace: Workspace, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Operator]]:
    ops = [Operator(workspace.cluster, workspace.namespace, tmp_path / f"operator-{i}.log") for i in "ab"]
    yield ops
    for op in ops:
        op.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for op in ops:
            lines = [line for line in op.log_text().splitlines() if "HTTP Request:" not in line]
            print(f"----- {op.log_path.name}, last 80 lines -----")
            print("\n".join(lines[-80:]))


def election_env(ws: Workspace) -> dict[str, str]:
    return {"KUBETRAIN_LEADER_ELECTION": "true", "KUBETRAIN_LEADER_LEASE_NAMESPACE": ws.namespace}


def current_leader(ops: list[Operator]) -> tuple[Operator, Operator, str] | None:
    """(leader, standby, leader identity) once exactly one says 200 and the other 503."""
    (ca, ba), (cb, bb) = (leader_status(op) for op in ops)
    if (ca, cb) == (200, 503):
        return ops[0], ops[1], str(ba["identity"])
    if (ca, cb) == (503, 200):
        return ops[1], ops[0], str(bb["identity"])
    return None


def lease_holder(ws: Workspace) -> str | None:
    proc = ws.kubectl("get", "lease", LEASE, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    return (json.loads(proc.stdout).get("spec") or {}).get("holderIdentity")


def one_job(ws: Workspace, run: str) -> list[dict[str, Any]] | None:
    jobs = ws.jobs(run)
    return jobs if len(jobs) == 1 else None


def test_one_leader_a_standby_and_takeover_after_kill(workspace: Workspace, two_operators: list[Operator]) -> None:
    ws, ops = workspace, two_operators
    for op in ops:
        op.start(**election_env(ws))
    with LeaderPoller(ops) as poller:
        lead, standby, identity = wait_until("one leader and one standby", lambda: current_leader(ops), 90, 0.3)
        assert wait_until("the Lease names the leader", lambda: lease_holder(ws) == identity, 10, 0.3)
        _, standby_body = leader_status(standby)
        assert standby_body["leader"] is False and standby_body["identity"] != identity
        for op in ops:  # liveness and readiness pass on both (a standby must be Ready for rolling updates)
            assert (http_status(op, "/healthz"), http_status(op, "/readyz")) == (200, 200)
        assert (lead.metric("kubetrain_leader"), standby.metric("kubetrain_leader")) == (1.0, 0.0)

        ws.apply(iris_run("before"))
        wait_until("one Job for the first run", lambda: one_job(ws, "before"), 90)
        time.sleep(3)  # a second operator would have created its Job by now
        assert len(ws.jobs("before")) == 1
        # The standby ran no kopf handler at all: the startup handler's line is only in the leader's log.
        assert "kubetrain settings:" in lead.log_text()
        assert "kubetrain settings:" not in standby.log_text().split("===== operator start")[-1]

        lead.kill()  # SIGKILL: no release of the Lease, like a crashed pod
        killed = time.monotonic()
        new_identity = wait_until(
            "the standby leads", lambda: leader_status(standby)[1].get("identity") if leader_status(standby)[0] == 200
            else None, TAKEOVER_BOUND + 5, 0.2,
        )  # fmt: skip
        took = time.monotonic() - killed
        print(f"takeover {took:.1f}s after kill -9 ({poller.samples} samples of /leader so far)")
        assert took < TAKEOVER_BOUND, f"takeover took {took:.1f}s"
        assert new_identity != identity
        assert wait_until("the Lease names the new leader", lambda: lease_holder(ws) == new_identity, 10, 0.3)
        assert standby.metric("kubetrain_leader") == 1.0

        ws.apply(iris_run("after"))
        wait_until("one Job for the run applied after the takeover", lambda: one_job(ws, "after"), 90)
        ws.wait_phase("after", ("Running", "Succeeded"), timeout=90)
        time.sleep(2)
        assert len(ws.jobs("before")) == 1 and len(ws.jobs("after")) == 1
    assert poller.samples > 50, poller.samples
    assert not poller.both, f"two leaders at once at {poller.both}"

    # A clean stop (SIGTERM) of the leader hands the Lease back and exits 0.
    standby.stop()
    assert standby.proc is not None and standby.proc.returncode == 0, standby.log_text()[-2000:]
    assert lease_holder(ws) is None


def test_a_leader_that_loses_its_lease_exits_at_once(workspace: Workspace, two_operators: list[Operator]) -> None:
    """Another holder written into the Lease (as a standby would after an expiry it saw): the leader's next
    renewal gets 409, reads the Lease, and the process exits with status 3 within a renew interval or two,
    without waiting for kopf to wind down."""
    from kubetrain_operator.leader import LOST_LEASE_EXIT_CODE

    ws, (op, standby) = workspace, two_operators
    op.start(**election_env(ws))
    wait_until("the operator leads", lambda: leader_status(op)[0] == 200, 90, 0.3)
    assert "kubetrain settings:" in op.log_text()
    # A standby stops cleanly on SIGTERM while it waits (no kopf to stop), and leaves the Lease alone.
    standby.start(**election_env(ws))
    wait_until("a standby", lambda: leader_status(standby)[0] == 503, 60, 0.3)
    holder = lease_holder(ws)
    standby.stop()
    assert standby.proc is not None and standby.proc.returncode == 0, standby.log_text()[-2000:]
    assert "stopped while standby" in standby.log_text() and lease_holder(ws) == holder
    patch = {"spec": {"holderIdentity": "a-thief", "renewTime": "2026-01-01T00:00:00.000000Z"}}
    ws.kubectl("patch", "lease", LEASE, "--type=merge", "-p", json.dumps(patch))
    stolen = time.monotonic()
    code = op.wait_exit(timeout=15)
    print(f"exited {code} {time.monotonic() - stolen:.1f}s after the Lease was taken")
    assert code == LOST_LEASE_EXIT_CODE, op.log_text()[-2000:]
    assert time.monotonic() - stolen < 6  # one renew interval (3 s), then an immediate re-read after the 409
    assert "lost the Lease (the Lease is held by a-thief)" in op.log_text()
    assert lease_holder(ws) == "a-thief"  # not released: it is not ours any more


def test_a_frozen_leader_exits_when_it_wakes_after_the_takeover(
    workspace: Workspace, two_operators: list[Operator]
) -> None:
    """SIGSTOP of the leader (a frozen node, a long GC pause) for longer than the lease: the standby takes over;
    on SIGCONT the old leader's renew deadline has passed and it exits with status 3 instead of reconciling
    next to the new leader."""
    import os
    import signal

    from kubetrain_operator.leader import LOST_LEASE_EXIT_CODE

    ws, ops = workspace, two_operators
    for op in ops:
        op.start(**election_env(ws))
    lead, standby, identity = wait_until("one leader and one standby", lambda: current_leader(ops), 90, 0.3)
    assert lead.proc is not None
    os.killpg(lead.proc.pid, signal.SIGSTOP)
    try:
        wait_until("the standby leads", lambda: leader_status(standby)[0] == 200, TAKEOVER_BOUND + 5, 0.2)
        assert lease_holder(ws) not in (None, identity)
    finally:
        os.killpg(lead.proc.pid, signal.SIGCONT)
    assert lead.wait_exit(timeout=10) == LOST_LEASE_EXIT_CODE, lead.log_text()[-2000:]
    assert leader_status(standby)[0] == 200
