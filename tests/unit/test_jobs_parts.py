"""The pure parts of jobs: schedules, job definitions, parameters, masking, sealing, and
the root-safe reading and writing of files in a home (real files in ``tmp_path``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from hometier.crypto import BadSecretKey, CannotUnseal, NoSecretKey, Sealer, SecretKeyFileUnsafe
from hometier.errors import UsageError
from hometier.jobs import files, notebook, schedule, spec
from hometier.jobs.context import JobsContext
from hometier.jobs.hubapi import HubAPI

UTC = dt.UTC
NOW = dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)


def ctx(**kw: object) -> JobsContext:
    return JobsContext(lc=None, hub=HubAPI("http://x/hub/api", "", "http://x"), **kw)  # type: ignore[arg-type]


# -- schedules ----------------------------------------------------------------------------


def test_cron_is_evaluated_in_the_jobs_time_zone_across_daylight_saving() -> None:
    # Paris springs forward on 2026-03-29 at 02:00: 02:30 does not exist that night.
    t = schedule.next_after("30 2 * * *", "Europe/Paris", NOW)
    assert t == dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 local, after the gap
    t2 = schedule.next_after("30 2 * * *", "Europe/Paris", t)
    assert t2 == dt.datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert schedule.next_after("@daily", "UTC", NOW) == dt.datetime(2026, 3, 29, tzinfo=UTC)


@pytest.mark.parametrize(
    "expr, words",
    [
        ("* * *", "five fields"),
        ("* * * * * *", "five fields"),
        ("61 * * * *", "minute"),
        ("*/0 * * * *", "minute"),
        ("0 0 31 2 *", "day-of-month"),
        ("; rm -rf / #", "minute"),
        ("0 3 * * *\n0 4 * * *", "five fields"),
        ("x" * 1000, "longer than"),
        ("０ ３ * * *", "ASCII"),
        ("* * * * *", "more often than"),
        ("*/1 3 * * *", "more often than"),
        ("1-100000 * * * *", "minute"),
    ],
)
def test_hostile_cron_strings_are_refused_with_a_reason(expr: str, words: str) -> None:
    with pytest.raises(schedule.BadSchedule) as info:
        schedule.check(expr, "UTC", NOW, dt.timedelta(minutes=5))
    assert words in info.value.get_message()


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", ""])
def test_unknown_time_zones_are_refused(tz: str) -> None:
    with pytest.raises(schedule.BadTimezone):
        schedule.timezone(tz)


# -- definitions --------------------------------------------------------------------------


def test_a_definition_becomes_job_fields() -> None:
    fields = spec.check_spec(
        {
            "name": "nightly report",
            "path": "reports/daily.ipynb",
            "schedule": "@daily",
            "timezone": "Europe/Paris",
            "parameters": {"day": "mon", "n": [1, 2.5, None, True]},
            "timeout": "2h",
            "retries": 2,
            "keep": 3,
            "server": "gpu",
        },
        ctx(),
        NOW,
    )
    assert fields["schedule"] == "0 0 * * *" and fields["kind"] == "notebook"
    assert fields["timeout"] == 7200 and fields["retries"] == 2 and fields["server"] == "gpu"
    assert spec.first_time(fields, NOW) == dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "doc, words",
    [
        ({"path": "../bob/x.ipynb"}, "'..'"),
        ({"path": "a//b.ipynb"}, "empty"),
        ({"path": "/etc/passwd.py"}, "relative"),
        ({"path": "~bob/x.ipynb"}, "relative"),
        ({"path": "x.sh"}, ".ipynb"),
        ({"path": "a\nb.ipynb"}, "control"),
        ({"name": "../x"}, "name"),
        ({"timeout": 10**9}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"server": "Job/../x"}, "server"),
        ({"parameters": {"import os": 1}}, "variable name"),
        ({"parameters": {"class": 1}}, "variable name"),
        ({"parameters": {"x": float("nan")}}, "finite"),
        ({"parameters": [1]}, "object"),
        ({"secrets": ["A B"]}, "secret name"),
        ({"secrets": ["TOKEN"]}, "no secret key"),
        ({"profile": "gpu"}, "profile"),
        ({"run_at": "2030-01-01T02:00"}, "offset"),
        ({"colour": "red"}, "unknown job fields"),
    ],
)
def test_bad_definitions_are_refused(doc: dict, words: str) -> None:
    base = {"name": "x", "path": "x.ipynb", "schedule": "0 3 * * *"}
    with pytest.raises(UsageError) as info:
        spec.check_spec({**base, **doc}, ctx(), NOW)
    assert words in info.value.get_message()


# -- parameters, secrets in the kernel, masking --------------------------------------------


def test_parameters_are_injected_after_the_parameters_cell_as_papermill_does() -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("a = 1")]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells.append(nbformat.v4.new_code_cell("print(a)"))
    notebook.inject_parameters(nb, {"a": 2, "s": 'it\'s "quoted"', "d": {"k": [True, None]}})
    notebook.inject_parameters(nb, {"a": 3})  # replaces, never piles up
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and nb.cells.index(injected[0]) == 2
    scope: dict = {}
    exec(injected[0].source, scope)  # noqa: S102 - the literals must be valid Python
    assert scope["a"] == 3
    notebook.inject_parameters(nb, {"s": 'it\'s "quoted"', "d": {"k": [True, None]}})
    scope = {}
    exec(nb.cells[2].source, scope)  # noqa: S102
    assert scope["s"] == 'it\'s "quoted"' and scope["d"] == {"k": [True, None]}


def test_secrets_reach_the_environment_of_a_real_python() -> None:
    values = {"API_TOKEN": "a'b\"c\\d\nline2", "OTHER": "é✓"}
    code = (
        notebook.secrets_code(values)
        + "import os, json; print(json.dumps({k: os.environ[k] for k in ['API_TOKEN', 'OTHER']}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == values
    assert "line2" not in code and 'API_TOKEN"' not in code  # nothing readable in clear


def test_masking_covers_raw_escaped_and_multiline_forms() -> None:
    m = notebook.Masker(["hunter2-secret", "ab", "multi\nline-value"])
    doc = {"text": 'pw=hunter2-secret; json="multi\\nline-value"; x=ab', "list": ["line-value"]}
    masked = m.any(doc)
    assert "hunter2" not in json.dumps(masked) and "line-value" not in json.dumps(masked)
    assert "x=ab" in masked["text"]  # too short to mask without garbling everything


# -- sealing ------------------------------------------------------------------------------


def test_sealer_round_trip_rotation_and_wrong_keys() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    sealed = Sealer([old]).seal(b"value")
    assert b"value" not in sealed.encode()
    both = Sealer([new, old])
    assert both.unseal(sealed) == b"value"
    rotated = both.rotate(sealed)
    assert Sealer([new]).unseal(rotated) == b"value"
    with pytest.raises(CannotUnseal):
        Sealer([Fernet.generate_key()]).unseal(sealed)
    with pytest.raises(CannotUnseal):
        Sealer([old]).unseal(sealed[:-4] + "AAAA")
    with pytest.raises(BadSecretKey):
        Sealer([b"not-a-key"])
    with pytest.raises(NoSecretKey):
        Sealer([])


def test_key_file_must_be_private(tmp_path: Path) -> None:
    from hometier.config import Hometier

    key = tmp_path / "key"
    key.write_text(Fernet.generate_key().decode() + "\n")
    key.chmod(0o644)
    cfg = Hometier(secret_key="", secret_key_file=str(key))
    with pytest.raises(SecretKeyFileUnsafe):
        Sealer.from_config(cfg)
    key.chmod(0o600)
    assert Sealer.from_config(cfg).unseal(Sealer.from_config(cfg).seal(b"x")) == b"x"
    os.symlink(key, tmp_path / "link")
    with pytest.raises(SecretKeyFileUnsafe):
        Sealer.from_config(Hometier(secret_key="", secret_key_file=str(tmp_path / "link")))


# -- files in a home ----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "homes" / "ada"
    (h / "reports").mkdir(parents=True)
    (h / "reports" / "daily.ipynb").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.ipynb").write_text("not yours")
    return h


def read(home: Path, path: str, limit: int = 1 << 20) -> bytes:
    data = files.run_as_owner(home, files.read_source, path, "ada", limit)
    assert isinstance(data, bytes)
    return data


def test_reading_refuses_every_way_out_of_the_home(home: Path, tmp_path: Path) -> None:
    assert read(home, "reports/daily.ipynb") == b"{}"
    os.symlink(tmp_path / "outside" / "secret.ipynb", home / "evil.ipynb")
    os.symlink(tmp_path / "outside", home / "out")
    os.symlink("daily.ipynb", home / "reports" / "inner.ipynb")  # even inside the home
    os.mkfifo(home / "fifo.ipynb")
    for path, words in [
        ("evil.ipynb", "symbolic link"),
        ("out/secret.ipynb", "symbolic link"),
        ("reports/inner.ipynb", "symbolic link"),
        ("fifo.ipynb", "not a regular file"),
        ("reports", ".ipynb"),
        ("../outside/secret.ipynb", "'..'"),
    ]:
        with pytest.raises(UsageError) as info:
            read(home, path)
        assert words in info.value.get_message(), path
    with pytest.raises(files.SourceNotFound):
        read(home, "missing.ipynb")
    with pytest.raises(files.SourceTooLarge):
        read(home, "reports/daily.ipynb", limit=1)
    # A home that is itself a link is refused, whatever it points to.
    os.symlink(home, home.parent / "link-home")
    with pytest.raises(files.PathRefused):
        read(home.parent / "link-home", "reports/daily.ipynb")


def test_outputs_are_new_files_and_only_the_newest_are_kept(home: Path) -> None:
    def write(stamp: str, data: bytes = b"out") -> str:
        rel = files.run_as_owner(home, files.write_output, "reports/daily.ipynb", stamp, data, 2)
        assert isinstance(rel, str)
        return rel

    # A name already taken (even by a dangling link a user planted) is never replaced.
    os.symlink("/etc/shadow", home / "reports" / "daily.2026-01-01T0200.ipynb")
    first = write("2026-01-01T0200")
    assert first == "reports/daily.2026-01-01T0200-1.ipynb"
    assert os.readlink(home / "reports" / "daily.2026-01-01T0200.ipynb") == "/etc/shadow"
    write("2026-01-02T0200")
    write("2026-01-03T0200")
    names = sorted(p.name for p in (home / "reports").iterdir())
    assert names == ["daily.2026-01-02T0200.ipynb", "daily.2026-01-03T0200.ipynb", "daily.ipynb"]
    assert Path("/etc/shadow").exists()
    assert not [n for n in os.listdir(home / "reports") if n.startswith(".")]  # no temp left


@pytest.mark.root
def test_files_are_read_and_written_with_the_owners_credentials(home: Path) -> None:
    uid, gid = 4242, 4242
    os.chown(home, uid, gid)
    os.chown(home / "reports", uid, gid)
    os.chown(home / "reports" / "daily.ipynb", uid, gid)
    # A file of root's, readable by root only, hard-linked or copied into the home.
    private = home / "reports" / "roots.ipynb"
    private.write_text("root only")
    private.chmod(0o600)
    with pytest.raises(files.PathRefused) as info:
        read(home, "reports/roots.ipynb")
    assert "cannot read" in info.value.get_message()
    rel = files.run_as_owner(
        home, files.write_output, "reports/daily.ipynb", "2026-01-01T0000", b"x", 5
    )
    st = os.lstat(home / str(rel))
    assert (st.st_uid, st.st_gid) == (uid, gid) and stat.S_IMODE(st.st_mode) & 0o002 == 0
    # A folder the user cannot write stays untouched: the kernel refuses, not a check.
    os.chown(home / "reports", 0, 0)
    (home / "reports").chmod(0o755)
    with pytest.raises(PermissionError):
        files.run_as_owner(
            home, files.write_output, "reports/daily.ipynb", "2026-01-02T0000", b"x", 5
        )
    assert os.geteuid() == 0 and os.stat("/").st_uid == 0  # the thread gave its fsuid back


# -- telling the owner ---------------------------------------------------------------------


def test_the_notifier_is_hometiers_when_installed_and_never_fails_a_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    from hometier.jobs import notify

    sent: list[tuple] = []
    module = types.ModuleType("hometier.notify")
    module.notify = lambda event, user, subject, text, **fields: sent.append(  # type: ignore[attr-defined]
        (event, user, subject, fields)
    )
    monkeypatch.setitem(sys.modules, "hometier.notify", module)
    fn = notify.find_notifier()
    notify.tell_owner(fn, "job.failed", "ada", "Job 'x' failed", "text", job=1)
    assert sent == [("job.failed", "ada", "Job 'x' failed", {"job": 1})]

    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("smtp down")

    notify.tell_owner(broken, "job.failed", "ada", "s", "t")  # logged, not raised
    monkeypatch.setitem(sys.modules, "hometier.notify", None)  # absent: the log only
    assert notify.find_notifier() is notify._event_log_only
