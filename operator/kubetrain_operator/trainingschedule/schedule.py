"""When a TrainingSchedule fires: pure functions of (schedule, last tick, now).

A schedule is a 5-field cron expression, a macro (``@hourly``, ``@daily``, ...), or ``@every <duration>``
(at least 10 s). Cron expressions are evaluated in the schedule's IANA time zone by croniter, which follows
cron's rules across daylight-saving changes: a wall-clock time that does not exist fires at the first
instant after the jump, and a time that exists twice fires once. ``@every`` ticks are aligned to the Unix
epoch (every 15 s means :00, :15, :30, :45), so a tick's time - and the child run named after it - never
depends on when the operator happened to look.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

MIN_EVERY = timedelta(seconds=10)
# Like CronJob's 100: past this many missed ticks the count is reported as "at least", and nothing is
# enumerated beyond it (a schedule last seen a year ago at @every 10s must not walk 3 million ticks).
MAX_COUNTED_TICKS = 1000
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
# Child run names: <schedule>-<unix seconds of the tick>; TrainingRun names are at most 52 characters.
RUN_NAME_MAX = 52
_TICK_DIGITS = 10


class ScheduleError(ValueError):
    """The schedule or its time zone cannot be used; the message names what is wrong."""


@dataclass(frozen=True)
class Schedule:
    """A parsed ``spec.schedule`` with its time zone."""

    expression: str
    time_zone: ZoneInfo
    every: timedelta | None = None

    def ticks_after(self, start: datetime) -> Iterator[datetime]:
        """Tick instants strictly after ``start``, in UTC, in order (an endless iterator)."""
        start = _aware(start)
        if self.every is not None:
            step = int(self.every.total_seconds())
            first = (int(start.timestamp()) // step + 1) * step
            tick = first
            while True:
                yield datetime.fromtimestamp(tick, UTC)
                tick += step
        cron = croniter(self.expression, start.astimezone(self.time_zone))
        while True:
            try:
                yield cron.get_next(datetime).astimezone(UTC)
            except CroniterBadDateError:  # e.g. "0 0 30 2 *": no such day, ever
                return

    def next_tick(self, now: datetime) -> datetime | None:
        """The first tick after ``now``, or None for a cron that never fires."""
        return next(self.ticks_after(now), None)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h30m`` (Go-style, whole units h/m/s) -> a timedelta; ScheduleError otherwise."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ScheduleError(f"@every takes a duration such as 30s, 15m or 1h30m, not {text.strip()!r}")
    hours, minutes, seconds = (int(match.group(k) or 0) for k in ("h", "m", "s"))
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def parse_schedule(expression: str, time_zone: str | None = None) -> Schedule:
    """Parse ``spec.schedule`` and ``spec.timeZone`` (default UTC); ScheduleError names the problem."""
    text = " ".join(expression.split())
    zone = _zone(time_zone or "UTC")
    if text.startswith("@every"):
        every = parse_duration(text.removeprefix("@every"))
        if every < MIN_EVERY:
            raise ScheduleError(f"@every must be at least {int(MIN_EVERY.total_seconds())}s, not {every}")
        return Schedule(text, zone, every)
    if text.startswith("@"):
        if text not in MACROS:
            raise ScheduleError(f"unknown macro {text!r}; use one of {', '.join(MACROS)} or @every <duration>")
        return Schedule(text, zone)
    if len(text.split()) != 5:
        raise ScheduleError(
            f"cron expressions have 5 fields (minute hour day-of-month month day-of-week), {text!r} has "
            f"{len(text.split())}"
        )
    try:
        croniter(text)
    except (CroniterBadCronError, ValueError) as exc:
        raise ScheduleError(f"invalid cron expression {text!r}: {exc}") from None
    return Schedule(text, zone)


@dataclass(frozen=True)
class DueTicks:
    """What a reconcile at ``now`` should do about the ticks since the last one it started."""

    start: tuple[datetime, ...]
    """Ticks to start now, oldest first (at most ``catchUp`` after downtime)."""
    missed: int
    """Ticks that passed while nobody started them (0 when the operator kept up)."""
    missed_capped: bool
    """True when ``missed`` stopped counting at MAX_COUNTED_TICKS."""
    next_tick: datetime | None
    first_due: datetime | None = None
    """The oldest due tick counted (None: nothing was due)."""
    last_due: datetime | None = None
    """The newest due tick: every tick up to it has been decided once this pass is acted on."""


def due_ticks(
    schedule: Schedule,
    *,
    last_tick: datetime | None,
    created: datetime,
    now: datetime,
    catch_up: int = 1,
    starting_deadline_seconds: int | None = None,
) -> DueTicks:
    """Ticks in (``last_tick`` or ``created``, ``now``]: one due tick is simply started; more than one means
    the operator was away, all of them count as missed, and the newest ``catch_up`` of those still inside
    ``starting_deadline_seconds`` are started. Pure: the caller persists ``status.lastScheduleTime``."""
    now = _aware(now)
    due, capped = _due(schedule, _aware(last_tick or created), now)
    if starting_deadline_seconds is not None:
        deadline = now - timedelta(seconds=starting_deadline_seconds)
        startable = [t for t in due if t >= deadline]
    else:
        startable = due
    if len(due) <= 1:
        start = startable
        missed = len(due) - len(startable)
    else:
        start = startable[-catch_up:] if catch_up > 0 else []
        missed = len(due)
    first, last = (due[0], due[-1]) if due else (None, None)
    return DueTicks(tuple(start), missed, capped, schedule.next_tick(now), first, last)


def _due(schedule: Schedule, since: datetime, now: datetime) -> tuple[list[datetime], bool]:
    """Ticks in (since, now], at most the newest MAX_COUNTED_TICKS, and whether there were more."""
    if schedule.every is not None:  # arithmetic: a year at @every 10s is 3 million ticks
        step = int(schedule.every.total_seconds())
        first = (int(since.timestamp()) // step + 1) * step
        last = int(now.timestamp()) // step * step
        count = max(0, (last - first) // step + 1)
        keep = min(count, MAX_COUNTED_TICKS)
        return [datetime.fromtimestamp(last - (keep - 1 - i) * step, UTC) for i in range(keep)], count > keep
    window: deque[datetime] = deque(maxlen=MAX_COUNTED_TICKS)
    count = 0
    for tick in schedule.ticks_after(since):
        if tick > now or count > MAX_COUNTED_TICKS:
            break
        window.append(tick)
        count += 1
    return list(window), count > MAX_COUNTED_TICKS


def run_name(schedule_name: str, tick: datetime) -> str:
    """The child TrainingRun of one tick: ``<schedule>-<unix seconds>``, deterministic, so a restart that
    reconsiders the same tick adopts the run it already made. Long schedule names keep a hash of the
    full name so two schedules never share children."""
    suffix = str(int(_aware(tick).timestamp())).zfill(_TICK_DIGITS)
    budget = RUN_NAME_MAX - len(suffix) - 1
    base = schedule_name
    if len(base) > budget:
        digest = hashlib.sha256(schedule_name.encode()).hexdigest()[:6]
        base = f"{schedule_name[: budget - 7].rstrip('-.')}-{digest}"
    return f"{base}-{suffix}"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC") from None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
