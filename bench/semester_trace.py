"""The login trace of one semester on a course hub: who logs in when, and for how long.

Pure and seeded: the same (seed, users, weeks) give the same trace. Times are seconds
from the semester's start ``T0`` (a Monday 00:00 UTC that the runner chooses), so the
trace can be replayed on any virtual clock.

The population (fractions of ``users``; names from ``make_corpus.user_names``):

- **staff** (2%): log in on most weekdays (90%) and some weekend days, for hours.
- **students** (25%), each in one or two of the courses (one course per 100 students).
  A course meets twice a week at fixed hours; a student attends 80% of the meetings at
  first, 55% by the end; most log in in the 48 hours before each weekly deadline, more
  often the closer it is; a few log in at other times. The teaching weeks are
  ``weeks`` minus a spring break in the middle (no meetings, no deadlines), then a
  finals week (a project due at its end). Among the students: 25% are *new* (their
  home and Hub account appear at their first login), 10% are *returning* after 5 to
  24 months away, 12% *leave* between the second and the eighth week and never come
  back.
- **occasional** users (5%): one to four logins at random times (alumni, researchers).
- the **idle tail** (the rest, about two thirds): never log in during the semester;
  their last activity was 30 days to 4 years before it.

After the finals week the replay runs ``break_weeks`` more weeks of the break, in which
only staff and occasional users log in: a semester's savings show once it is over.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DAY = 86400
HOUR = 3600
WEEK = 7 * DAY

ROLES = ("staff", "student", "occasional", "idle")


@dataclass(frozen=True)
class Session:
    """One login: the user's server runs from ``start`` to ``end`` (seconds from T0)."""

    user: str
    start: int
    end: int


@dataclass
class User:
    name: str
    role: str
    """staff, student, occasional or idle."""
    kind: str = ""
    """For students: new, returning, continuing; ``leaver`` is separate."""
    leaves_at: int | None = None
    """A student who leaves: no login after this (seconds from T0)."""
    last_before: int | None = None
    """The Hub's last_activity before the semester (negative seconds); None: no account yet."""
    courses: list[int] = field(default_factory=list)

    @property
    def home_at_start(self) -> bool:
        """New students get their home (and Hub account) at their first login."""
        return self.kind != "new"


@dataclass(frozen=True)
class Course:
    meetings: tuple[tuple[int, int], ...]
    """(weekday 0=Monday, hour UTC) of the two weekly meetings."""
    deadline: tuple[int, int]
    """(weekday, hour) of the weekly deadline."""


@dataclass
class Trace:
    seed: str
    weeks: int
    """Teaching weeks, spring break and finals included."""
    break_weeks: int
    users: list[User]
    courses: list[Course]
    sessions: list[Session]
    """Sorted by start."""

    @property
    def seconds(self) -> int:
        return (self.weeks + self.break_weeks) * WEEK

    @property
    def days(self) -> int:
        return self.seconds // DAY

    @property
    def finals_end(self) -> int:
        return self.weeks * WEEK

    def by_user(self) -> dict[str, list[Session]]:
        out: dict[str, list[Session]] = {u.name: [] for u in self.users}
        for s in self.sessions:
            out[s.user].append(s)
        return out

    def counts(self) -> dict[str, int]:
        roles: dict[str, int] = {}
        for u in self.users:
            key = u.role if u.role != "student" else f"student ({u.kind})"
            roles[key] = roles.get(key, 0) + 1
        roles["leavers"] = sum(u.leaves_at is not None for u in self.users)
        return roles


def _rng(seed: str, *parts: object) -> random.Random:
    return random.Random("|".join(str(p) for p in (seed, "trace", *parts)))


def _lognormal(rng: random.Random, median: float, sigma: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, median * math.exp(rng.gauss(0.0, sigma))))


def _courses(seed: str, n: int) -> list[Course]:
    rng = _rng(seed, "courses")
    pairs = [(0, 2), (1, 3), (0, 3), (2, 4), (1, 4)]
    hours = [8, 9, 10, 11, 13, 14, 15, 16]
    out = []
    for _ in range(n):
        a, b = rng.choice(pairs)
        h = rng.choice(hours)
        out.append(Course(((a, h), (b, h)), (rng.choice([4, 6]), 23)))
    return out


def make_trace(names: list[str], seed: str = "42", weeks: int = 16, break_weeks: int = 4) -> Trace:
    """The users (roles from ``seed``) and every session of the semester."""
    if weeks < 3:
        raise ValueError("a semester needs at least 3 weeks")
    rng = _rng(seed, "roles")
    order = sorted(names)
    rng.shuffle(order)
    n = len(order)
    n_staff = max(1, round(n * 0.02))
    n_students = max(1, round(n * 0.25))
    n_occasional = max(1, round(n * 0.05))
    courses = _courses(seed, max(1, n_students // 100))
    users: list[User] = []
    for i, name in enumerate(order):
        if i < n_staff:
            users.append(User(name, "staff", last_before=-int(rng.uniform(1, 4) * DAY)))
        elif i < n_staff + n_students:
            users.append(_student(rng, name, len(courses), weeks))
        elif i < n_staff + n_students + n_occasional:
            users.append(User(name, "occasional", last_before=-int(rng.uniform(30, 400) * DAY)))
        else:
            # Last term's students who did not come back, then a long tail of years.
            days = rng.uniform(30, 120) if rng.random() < 0.3 else rng.uniform(120, 1460)
            users.append(User(name, "idle", last_before=-int(days * DAY)))
    users.sort(key=lambda u: u.name)
    trace = Trace(seed, weeks, break_weeks, users, courses, [])
    sessions: list[Session] = []
    for u in users:
        sessions.extend(_merge(_sessions(seed, u, trace)))
    sessions.sort(key=lambda s: (s.start, s.user))
    trace.sessions = sessions
    return trace


def _student(rng: random.Random, name: str, n_courses: int, weeks: int) -> User:
    r = rng.random()
    kind = "new" if r < 0.25 else "returning" if r < 0.35 else "continuing"
    last = {
        "new": None,
        "returning": -int(rng.uniform(150, 730) * DAY),
        "continuing": -int(rng.uniform(20, 60) * DAY),
    }[kind]
    first = rng.randrange(n_courses)
    courses = [first]
    if n_courses > 1 and rng.random() < 0.3:
        courses.append((first + 1 + rng.randrange(n_courses - 1)) % n_courses)
    leaves = None
    if rng.random() < 0.12:
        leaves = int(rng.uniform(10, min(56, weeks * 7 // 2)) * DAY)
    return User(name, "student", kind, leaves, last, courses)


def _session(rng: random.Random, user: str, start: float, median_min: float) -> Session:
    length = _lognormal(rng, median_min * 60, 0.6, 10 * 60, 8 * HOUR)
    return Session(user, int(start), int(start + length))


def _sessions(seed: str, u: User, t: Trace) -> Iterable[Session]:
    rng = _rng(seed, "sessions", u.name)
    end = t.seconds
    if u.role == "staff":
        for day in range(t.days):
            weekday = day % 7
            if rng.random() < (0.9 if weekday < 5 else 0.1):
                start = day * DAY + rng.uniform(7.5, 11) * HOUR
                yield _session(rng, u.name, start, 240)
        return
    if u.role == "occasional":
        for _ in range(rng.randint(1, 4)):
            day = rng.randrange(t.days)
            yield _session(rng, u.name, day * DAY + rng.uniform(8, 22) * HOUR, 40)
        return
    if u.role != "student":
        return
    spring_break = t.weeks // 2
    finals = t.weeks - 1
    stop = min(end, u.leaves_at if u.leaves_at is not None else t.finals_end)
    out: list[Session] = []
    for week in range(t.weeks):
        if week == spring_break:
            continue
        progress = week / max(1, t.weeks - 1)
        attend = 0.8 - 0.25 * progress
        for c in u.courses:
            course = t.courses[c]
            if week < finals:
                for weekday, hour in course.meetings:
                    if rng.random() < attend:
                        start = week * WEEK + weekday * DAY + hour * HOUR + rng.uniform(-5, 15) * 60
                        out.append(_session(rng, u.name, start, 70))
            if week >= 1:
                # Before the deadline: the closer, the likelier (u**2 clusters near it).
                weekday, hour = course.deadline
                due = week * WEEK + weekday * DAY + hour * HOUR
                for _ in range(2 if week == finals else 1):
                    if rng.random() < (0.9 if week == finals else 0.55):
                        start = due - 48 * HOUR * rng.random() ** 2
                        out.append(_session(rng, u.name, start, 90))
        # Now and then, at another time.
        for _ in range(_poisson(rng, 0.5)):
            start = week * WEEK + rng.uniform(0, 7) * DAY
            out.append(_session(rng, u.name, start, 45))
    yield from (s for s in out if s.start < stop)


def _poisson(rng: random.Random, lam: float) -> int:
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p < limit:
            return k
        k += 1


def _merge(sessions: Iterable[Session]) -> list[Session]:
    """One server per user: overlapping sessions become one."""
    out: list[Session] = []
    for s in sorted(sessions, key=lambda s: s.start):
        if s.start < 0:
            continue
        if out and s.start <= out[-1].end:
            last = out[-1]
            out[-1] = Session(last.user, last.start, max(last.end, s.end))
        else:
            out.append(s)
    return out


def write_logins_csv(trace: Trace, t0: dt.datetime, path: Path) -> int:
    """The trace as an operator's login history: ``user,time`` (ISO 8601, UTC), one line
    per login, the pre-semester last activity of each user first. Returns the lines."""
    rows: list[tuple[dt.datetime, str]] = []
    for u in trace.users:
        if u.last_before is not None:
            rows.append((t0 + dt.timedelta(seconds=u.last_before), u.name))
    for s in trace.sessions:
        rows.append((t0 + dt.timedelta(seconds=s.start), s.user))
    rows.sort()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user", "time"])
        for when, name in rows:
            w.writerow([name, when.isoformat()])
    return len(rows)
