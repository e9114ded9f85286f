"""Leader election's decisions (operator/kubetrain_operator/leader.py) on a fake clock: when a Lease has
expired, who renews, who takes over, what is written, when a leader must stop. Pure functions only."""

from __future__ import annotations

import datetime as dt

import pytest
from kubetrain_operator import leader
from kubetrain_operator.leader import Action, LeaseRecord, Observation, decide, expired, lease_spec, observe
from kubetrain_operator.settings import Settings

WALL = dt.datetime(2026, 12, 2, 13, 0, 0, 123456, tzinfo=dt.UTC)
LEASE = 10.0


def record(holder: str | None = "a", rv: str = "1", renew: str = "t0", duration: float | None = 10) -> LeaseRecord:
    return LeaseRecord(
        holder=holder, duration=duration, transitions=2, acquire_time="t-acq", renew_time=renew, resource_version=rv
    )


def test_from_lease_reads_spec_and_resource_version() -> None:
    lease = {
        "metadata": {"name": "kubetrain-operator", "resourceVersion": "42"},
        "spec": {"holderIdentity": "pod-1-abcd", "leaseDurationSeconds": 10, "leaseTransitions": 3,
                 "acquireTime": "2026-12-02T13:00:00.000000Z", "renewTime": "2026-12-02T13:00:03.000000Z"},
    }  # fmt: skip
    r = LeaseRecord.from_lease(lease)
    assert (r.holder, r.duration, r.transitions, r.resource_version) == ("pod-1-abcd", 10, 3, "42")
    empty = LeaseRecord.from_lease({"metadata": {"resourceVersion": "7"}, "spec": {"holderIdentity": ""}})
    assert empty.holder is None and empty.transitions == 0


def test_the_first_sight_time_is_kept_while_the_lease_does_not_change() -> None:
    first = observe(None, record(rv="1"), now=100.0)
    assert first.seen_at == 100.0
    assert observe(first, record(rv="1"), now=105.0).seen_at == 100.0  # unchanged: still the first sight
    renewed = observe(first, record(rv="2", renew="t1"), now=106.0)
    assert renewed.seen_at == 106.0  # the leader renewed: the clock restarts


@pytest.mark.parametrize(
    ("seen_at", "now", "holder", "want"),
    [
        (100.0, 109.9, "a", False),  # within the lease duration
        (100.0, 110.0, "a", True),  # unchanged for the whole duration
        (100.0, 100.0, None, True),  # released: no holder
    ],
)
def test_expiry_is_measured_on_the_observers_clock(seen_at: float, now: float, holder: str | None, want: bool) -> None:
    assert expired(Observation(record(holder=holder), seen_at), now, LEASE) is want


def test_expiry_ignores_the_wall_clock_times_in_the_lease() -> None:
    """renewTime from another node's clock (here: an hour old) does not make a live Lease look expired."""
    obs = observe(None, record(renew="2026-12-02T12:00:00.000000Z"), now=100.0)
    assert not expired(obs, 101.0, LEASE)


def test_a_missing_duration_falls_back_to_ours() -> None:
    assert not expired(Observation(record(duration=None), 100.0), 105.0, LEASE)
    assert expired(Observation(record(duration=None), 100.0), 110.0, LEASE)


@pytest.mark.parametrize(
    ("obs", "now", "want"),
    [
        (Observation(None, 0.0), 0.0, Action.CREATE),
        (Observation(record(holder="me"), 0.0), 100.0, Action.RENEW),  # ours, even when "expired" here
        (Observation(record(holder="other"), 0.0), 5.0, Action.WAIT),
        (Observation(record(holder="other"), 0.0), 10.0, Action.ACQUIRE),
        (Observation(record(holder=None), 0.0), 0.0, Action.ACQUIRE),
    ],
)
def test_decide(obs: Observation, now: float, want: Action) -> None:
    assert decide("me", obs, now, LEASE) is want


def test_a_standby_takes_over_within_15_seconds_of_the_leaders_last_renewal() -> None:
    """Leader renews every 3 s and dies; the standby looks every 2 s (fake clock): it acquires once it has seen
    the Lease unchanged for 10 s, i.e. at most lease + retry after the last renewal it could see."""
    retry, renew_every = 2.0, 3.0
    leader_renewals = [0.0, 3.0, 6.0]  # dies right after t=6
    obs: Observation | None = None
    t = 0.5
    while True:
        rv = str(sum(1 for r in leader_renewals if r <= t))
        obs = observe(obs, record(holder="dead", rv=rv), now=t)
        if decide("standby", obs, t, LEASE) is Action.ACQUIRE:
            break
        t += retry
    assert leader_renewals[-1] + LEASE <= t <= leader_renewals[-1] + LEASE + retry + renew_every
    assert t - leader_renewals[-1] < 15


def test_two_standbys_never_both_see_a_live_lease_as_theirs() -> None:
    obs = Observation(record(holder="b"), 0.0)
    assert decide("a", obs, 5.0, LEASE) is Action.WAIT
    assert decide("c", obs, 5.0, LEASE) is Action.WAIT
    assert decide("b", obs, 5.0, LEASE) is Action.RENEW


def test_lease_spec_for_create_acquire_and_renew() -> None:
    created = lease_spec("me", None, Action.CREATE, WALL, LEASE)
    assert created == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 10,
        "acquireTime": "2026-12-02T13:00:00.123456Z",
        "renewTime": "2026-12-02T13:00:00.123456Z",
        "leaseTransitions": 0,
    }
    taken = lease_spec("me", record(holder="other"), Action.ACQUIRE, WALL, LEASE)
    assert taken["leaseTransitions"] == 3 and taken["acquireTime"] == taken["renewTime"]
    freed = lease_spec("me", record(holder=None), Action.ACQUIRE, WALL, LEASE)
    assert freed["leaseTransitions"] == 2  # nobody held it: no transition
    renewed = lease_spec("me", record(holder="me"), Action.RENEW, WALL, LEASE)
    assert renewed["acquireTime"] == "t-acq" and renewed["renewTime"] == "2026-12-02T13:00:00.123456Z"
    assert renewed["leaseTransitions"] == 2
    with pytest.raises(ValueError):
        lease_spec("me", record(), Action.WAIT, WALL, LEASE)


def test_micro_time_is_utc_with_microseconds() -> None:
    cest = dt.timezone(dt.timedelta(hours=2))
    assert leader.micro_time(dt.datetime(2026, 12, 2, 15, 0, 0, 5, tzinfo=cest)) == "2026-12-02T13:00:00.000005Z"


def test_a_released_lease_has_no_holder_and_is_free_at_once() -> None:
    spec = leader.released_spec(record(holder="me"), WALL)
    assert spec["holderIdentity"] is None and spec["leaseDurationSeconds"] == 1
    released = LeaseRecord.from_lease({"metadata": {"resourceVersion": "9"}, "spec": spec})
    assert decide("standby", observe(None, released, 0.0), 0.0, LEASE) is Action.ACQUIRE


def test_the_leader_stops_before_a_standby_can_take_over() -> None:
    """Renewal sent at t=0 (the standby saw it no earlier): the leader is overdue at 10 s, a standby
    acquires at 15 s at the earliest."""
    s = Settings()
    assert s.leader_renew_seconds < s.leader_renew_deadline_seconds < s.leader_lease_seconds
    assert not leader.renew_overdue(0.0, 9.9, s.leader_renew_deadline_seconds)
    assert leader.renew_overdue(0.0, 10.0, s.leader_renew_deadline_seconds)
    assert not expired(
        Observation(record(holder="leader", duration=s.leader_lease_seconds), 0.0),
        s.leader_renew_deadline_seconds,
        s.leader_lease_seconds,
    )


def test_settings_defaults_and_timing_rule() -> None:
    s = Settings.from_env({})
    assert s.leader_election is False  # off outside the chart (local runs, test subprocesses)
    assert (s.leader_lease_seconds, s.leader_renew_seconds, s.leader_retry_seconds) == (15.0, 3.0, 2.0)
    assert s.leader_renew_deadline_seconds == 10.0  # client-go's lease / renew deadline / retry: 15 / 10 / 2
    assert s.lease_namespace == "default"
    pod = Settings.from_env({"POD_NAME": "kt-7f-x", "POD_NAMESPACE": "kubetrain-system"})
    assert pod.pod_name == "kt-7f-x" and pod.lease_namespace == "kubetrain-system"
    explicit = Settings.from_env({"POD_NAMESPACE": "a", "KUBETRAIN_LEADER_LEASE_NAMESPACE": "b"})
    assert explicit.lease_namespace == "b"
    with pytest.raises(ValueError, match="leader_renew_deadline_seconds"):
        Settings.from_env({"KUBETRAIN_LEADER_RENEW_DEADLINE_SECONDS": "16"})


def test_identities_are_the_pod_name_and_a_random_suffix() -> None:
    a, b = leader.new_identity("kubetrain-5d8f-abcde"), leader.new_identity("kubetrain-5d8f-abcde")
    assert a.startswith("kubetrain-5d8f-abcde-") and b.startswith("kubetrain-5d8f-abcde-") and a != b
