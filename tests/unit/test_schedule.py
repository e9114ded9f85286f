"""TrainingSchedule tick arithmetic with a fake clock: parsing, time zones across DST, catch-up, names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kubetrain_operator.trainingschedule.schedule import (
    MAX_COUNTED_TICKS,
    RUN_NAME_MAX,
    ScheduleError,
    due_ticks,
    parse_duration,
    parse_schedule,
    run_name,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("15m", 900), ("1h30m", 5400), ("2h", 7200), ("1m30s", 90), (" 45s ", 45)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("@every 1s", None, "at least 10s"),
        ("@every 9s", None, "at least 10s"),
        ("@every", None, "duration such as"),
        ("@every 5 minutes", None, "duration such as"),
        ("@every 1.5h", None, "duration such as"),
        ("@fortnightly", None, "unknown macro"),
        ("61 * * * *", None, "invalid cron expression"),
        ("* * * *", None, "5 fields"),
        ("0 0 * * * *", None, "5 fields"),  # croniter would take seconds; CronJob's 5 fields do not
        ("not a cron", None, "5 fields"),
        ("0 9 * * MON-XYZ", None, "invalid cron expression"),
        ("0 9 * * *", "Mars/Olympus_Mons", "unknown time zone"),
        ("0 9 * * *", "../etc/passwd", "unknown time zone"),
    ],
)
def test_bad_schedules_name_the_problem(expression: str, zone: str | None, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(expression, zone)


def test_every_is_aligned_to_the_epoch_not_to_when_the_operator_looks() -> None:
    every = parse_schedule("@every 15s")
    ticks = every.ticks_after(utc(2026, 12, 1, 10, 0, 7))
    assert [next(ticks) for _ in range(3)] == [
        utc(2026, 12, 1, 10, 0, 15),
        utc(2026, 12, 1, 10, 0, 30),
        utc(2026, 12, 1, 10, 0, 45),
    ]
    assert every.next_tick(utc(2026, 12, 1, 10, 0, 15)) == utc(2026, 12, 1, 10, 0, 30)  # strictly after


def test_macros() -> None:
    assert parse_schedule("@hourly").next_tick(utc(2026, 12, 1, 10, 5)) == utc(2026, 12, 1, 11, 0)
    assert parse_schedule("@daily", "Europe/Berlin").next_tick(utc(2026, 12, 1, 10, 5)) == utc(2026, 12, 1, 23, 0)


def test_the_default_time_zone_is_utc_in_the_parser_the_model_and_the_crd() -> None:
    from pathlib import Path

    import yaml
    from kubetrain_api.models import TrainingScheduleSpec

    # No zone: 09:00 is 09:00 UTC, also on the day New York changes its clocks.
    ticks = parse_schedule("0 9 * * *").ticks_after(utc(2026, 3, 7, 12, 0))
    assert [next(ticks) for _ in range(2)] == [utc(2026, 3, 8, 9, 0), utc(2026, 3, 9, 9, 0)]
    assert parse_schedule("0 9 * * *").time_zone == parse_schedule("0 9 * * *", "UTC").time_zone
    template = {
        "spec": {"model": "m", "dataset": {"uri": "file:///d.csv", "target": "y"}, "estimator": {"name": "knn"}}
    }
    assert TrainingScheduleSpec.model_validate({"schedule": "@daily", "runTemplate": template}).time_zone == "UTC"
    crd = next(
        doc
        for doc in yaml.safe_load_all(
            (Path(__file__).parents[2] / "crds" / "kubetrain.io_trainingschedules.yaml").read_text()
        )
        if doc and doc["kind"] == "CustomResourceDefinition"
    )
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["timeZone"]["default"] == "UTC"  # what the API server stores when a user leaves it out


def test_a_daily_cron_keeps_its_wall_clock_time_across_dst() -> None:
    # New York springs forward on 2026-03-08: 09:00 local is 14:00 UTC before and 13:00 UTC after.
    schedule = parse_schedule("0 9 * * *", "America/New_York")
    ticks = schedule.ticks_after(utc(2026, 3, 6, 15, 0))
    assert [next(ticks) for _ in range(3)] == [utc(2026, 3, 7, 14, 0), utc(2026, 3, 8, 13, 0), utc(2026, 3, 9, 13, 0)]
    # ... and falls back on 2026-11-01: 13:00 UTC before, 14:00 UTC after.
    ticks = schedule.ticks_after(utc(2026, 10, 31, 0, 0))
    assert [next(ticks) for _ in range(2)] == [utc(2026, 10, 31, 13, 0), utc(2026, 11, 1, 14, 0)]


def test_a_time_skipped_by_dst_fires_right_after_the_jump_and_only_once() -> None:
    # 02:30 does not exist in New York on 2026-03-08 (02:00 -> 03:00): the tick comes at 03:00 EDT = 07:00 UTC.
    schedule = parse_schedule("30 2 * * *", "America/New_York")
    ticks = list(_take(schedule.ticks_after(utc(2026, 3, 7, 0, 0)), 3))
    assert ticks == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]


def test_one_due_tick_starts_and_nothing_is_missed() -> None:
    schedule = parse_schedule("@every 15s")
    due = due_ticks(
        schedule, last_tick=utc(2026, 12, 1, 10, 0, 0), created=utc(2026, 12, 1), now=utc(2026, 12, 1, 10, 0, 16)
    )
    assert due.start == (utc(2026, 12, 1, 10, 0, 15),)
    assert due.missed == 0
    assert due.next_tick == utc(2026, 12, 1, 10, 0, 30)


def test_no_tick_due_yet() -> None:
    schedule = parse_schedule("@every 15s")
    due = due_ticks(
        schedule, last_tick=utc(2026, 12, 1, 10, 0, 15), created=utc(2026, 12, 1), now=utc(2026, 12, 1, 10, 0, 29)
    )
    assert due.start == () and due.missed == 0 and due.next_tick == utc(2026, 12, 1, 10, 0, 30)


@pytest.mark.parametrize(("catch_up", "started"), [(0, 0), (1, 1), (2, 2), (5, 3)])
def test_after_three_ticks_of_downtime_catch_up_bounds_what_starts(catch_up: int, started: int) -> None:
    schedule = parse_schedule("@every 15s")
    due = due_ticks(
        schedule,
        last_tick=utc(2026, 12, 1, 10, 0, 0),
        created=utc(2026, 12, 1),
        now=utc(2026, 12, 1, 10, 0, 50),
        catch_up=catch_up,
    )
    assert due.missed == 3
    assert len(due.start) == started
    # The newest missed ticks are the ones started, oldest first.
    assert (
        list(due.start)
        == [utc(2026, 12, 1, 10, 0, 15), utc(2026, 12, 1, 10, 0, 30), utc(2026, 12, 1, 10, 0, 45)][3 - started :]
    )


def test_the_first_tick_is_counted_from_creation() -> None:
    schedule = parse_schedule("@every 1m")
    due = due_ticks(schedule, last_tick=None, created=utc(2026, 12, 1, 10, 0, 30), now=utc(2026, 12, 1, 10, 1, 5))
    assert due.start == (utc(2026, 12, 1, 10, 1, 0),) and due.missed == 0


def test_starting_deadline_drops_ticks_that_are_too_late() -> None:
    schedule = parse_schedule("@every 1m")
    due = due_ticks(
        schedule,
        last_tick=utc(2026, 12, 1, 10, 0),
        created=utc(2026, 12, 1),
        now=utc(2026, 12, 1, 10, 1, 50),
        starting_deadline_seconds=30,
    )
    assert due.start == () and due.missed == 1
    due = due_ticks(
        schedule,
        last_tick=utc(2026, 12, 1, 10, 0),
        created=utc(2026, 12, 1),
        now=utc(2026, 12, 1, 10, 5, 10),
        catch_up=3,
        starting_deadline_seconds=130,
    )
    assert due.missed == 5
    assert due.start == (utc(2026, 12, 1, 10, 3), utc(2026, 12, 1, 10, 4), utc(2026, 12, 1, 10, 5))


def test_a_year_of_downtime_is_counted_with_a_cap_and_starts_only_the_newest() -> None:
    schedule = parse_schedule("@every 10s")
    now = utc(2026, 12, 1, 10, 0, 5)
    due = due_ticks(schedule, last_tick=now - timedelta(days=365), created=now - timedelta(days=366), now=now)
    assert due.missed == MAX_COUNTED_TICKS and due.missed_capped
    assert due.start == (utc(2026, 12, 1, 10, 0, 0),)


def test_a_cron_that_never_fires_has_no_next_tick() -> None:
    schedule = parse_schedule("0 0 30 2 *")
    assert due_ticks(schedule, last_tick=None, created=utc(2026, 1, 1), now=utc(2026, 12, 1)).start == ()


def test_run_names_are_deterministic_unique_and_short() -> None:
    tick = utc(2026, 12, 1, 10, 0, 15)
    assert run_name("nightly", tick) == f"nightly-{int(tick.timestamp())}"
    assert run_name("nightly", tick) == run_name("nightly", tick)
    assert run_name("nightly", tick) != run_name("nightly", tick + timedelta(seconds=15))
    long_a, long_b = "a" * 60, "a" * 59 + "b"
    assert len(run_name(long_a, tick)) <= RUN_NAME_MAX
    assert run_name(long_a, tick) != run_name(long_b, tick)


def _take(it: object, n: int) -> list[datetime]:
    iterator = iter(it)  # type: ignore[call-overload]
    return [next(iterator) for _ in range(n)]
