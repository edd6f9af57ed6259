"""One run of a job, from lease to release (``execute_run``).

1. **Lease** the home for the run's timeout (plus a margin, renewed while it runs), so
   the archiver leaves it alone; if it is archived, restore it first.
2. **Read** the source as the home's owner, through descriptors (``files``), and build
   the notebook to run: parameters injected, a script as one cell.
3. **Server**: reuse the user's running server (the default one, or the named one the
   job asks for) or start a named server ``job-<run>`` through the Hub API, with a
   token minted for this run alone (one server, expiring with the timeout). While the
   run lasts its server's activity is reported to the Hub, so an idle culler leaves it
   alone; only the server's, so the run never looks like a login of the user.
4. **Execute** every code cell in a new kernel of that server (``kernel``); secrets
   reach the kernel's environment in a silent request first; outputs are masked and
   counted as they arrive. A cell that raises stops the run (unless tagged
   ``raises-exception``), as papermill does.
5. **Write** the executed copy next to the source, dated, as the owner (also after a
   failure: the traceback is the first thing a user wants), keep the newest N.
6. **Clean up** exactly what the run started: its kernel, the server it started (removed
   again), its token, its lease. Record the outcome; retry if the job allows; tell the
   owner.

A crash at any point leaves a ``running`` row whose heartbeat stops; another process
takes it over (``scheduler.recover``) and stops what the row says the run held.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

from hometier.crypto import CannotUnseal
from hometier.errors import Error, new_reference
from hometier.jobs import files, notebook
from hometier.jobs.context import JobsContext
from hometier.jobs.hubapi import HubCallFailed, SpawnFailed, run_scopes
from hometier.jobs.kernel import Kernel, KernelFailed, OutputTooLarge
from hometier.jobs.notify import tell_owner
from hometier.lifecycle.restoring import RestoreFailed, restore_home
from hometier.state import jobs as jq
from hometier.state import queries

log = logging.getLogger(__name__)
LEASE_MARGIN = dt.timedelta(minutes=10)


class CellFailed(Error):
    """Cell {} raised {}: {}"""

    exit_code = 7
    http_status = 422


class ServerBusy(Error):
    """The server {} is starting or stopping; the run will try again later."""

    exit_code = 7
    http_status = 409


@dataclass
class Run:
    """What one run holds, for its cleanup (mirrored in the database row)."""

    run: jq.JobRun
    job: jq.Job
    ref: str = field(default_factory=new_reference)
    lease_id: str | None = None
    token: str | None = None
    token_id: str | None = None
    server: str | None = None
    started_server: bool = False
    kernel: Kernel | None = None
    nb: Any = None
    masker: notebook.Masker = field(default_factory=lambda: notebook.Masker([]))
    output_bytes: int = 0
    stop_reason: str | None = None
    stop_state: str = jq.FAILED
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds since the start at which each step ended (the log line of the run)."""
    began: float = field(default_factory=time.monotonic)

    def mark(self, phase: str) -> None:
        self.phases[phase] = round(time.monotonic() - self.began, 1)

    @property
    def user(self) -> str:
        return self.job.user


async def _db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def execute_run(ctx: JobsContext, run: jq.JobRun, job: jq.Job) -> jq.JobRun:
    """Carry out a run this process has claimed; see the module docstring. Never raises
    for the run's own failures: they are recorded on the run and told to the owner."""
    r = Run(run, job)
    began = time.monotonic()
    body = asyncio.ensure_future(_body(ctx, r))
    beat = asyncio.ensure_future(_beat(ctx, r, body))
    state, reason, detail = jq.SUCCEEDED, None, None
    stopping = False
    try:
        try:
            done, _ = await asyncio.wait({body}, timeout=job.timeout)
        except asyncio.CancelledError:  # this process is stopping
            stopping, done = True, set()
            r.stop_reason = "interrupted: hometier stopped while it ran"
        if not done:
            r.stop_reason = r.stop_reason or f"timed out after {_human(job.timeout)}"
            if r.kernel is not None and not stopping:
                await r.kernel.interrupt()
            body.cancel()
        try:
            await body
        except asyncio.CancelledError:
            state, reason = r.stop_state, r.stop_reason or "interrupted"
        except (Error, OSError) as exc:
            state = jq.FAILED
            reason = r.masker.text(_user_reason(exc))
            detail = r.masker.text(exc.get_message() if isinstance(exc, Error) else str(exc))
        except Exception as exc:  # a defect: still clean up and record the run
            log.exception("run %s failed unexpectedly [reference %s]", run.id, r.ref)
            state, reason, detail = jq.FAILED, "an internal error occurred", repr(exc)
    finally:
        beat.cancel()
        output = await _cleanup(ctx, r)
        seconds = time.monotonic() - began
        if state != jq.SUCCEEDED:
            log.warning(
                "job %s run %s of %s %s [reference %s]: %s",
                job.id, run.id, job.user, state, r.ref, detail or reason,
            )  # fmt: skip
            reason = f"{reason} (reference {r.ref})"
        else:
            log.info(
                "job %s run %s of %s succeeded in %.1fs (%s)", job.id, run.id, job.user, seconds,
                ", ".join(f"{k} at {v}s" for k, v in r.phases.items()),
            )  # fmt: skip
        try:
            final: jq.JobRun
            final, retry = await _db(
                jq.finish_run, ctx.lc.db, run.id, ctx.worker, state, ctx.lc.now(),
                reason=reason, detail=detail, output_path=output,
                retry=state == jq.FAILED,
            )  # fmt: skip
        except jq.ClaimLost:
            log.warning("run %s was taken over by another process; not recording it", run.id)
            return run
        _tell(ctx, r, final, retry)
    if stopping:
        raise asyncio.CancelledError
    return final


def _tell(ctx: JobsContext, r: Run, final: jq.JobRun, retry: jq.JobRun | None) -> None:
    if final.state == jq.SUCCEEDED and not ctx.notify_success:
        return
    what = {"succeeded": "succeeded", "failed": "failed", "cancelled": "was cancelled"}
    subject = f"Job {r.job.name!r} {what.get(final.state, final.state)}"
    text = subject + "."
    if final.reason:
        text += f"\n\nReason: {final.reason}"
    if final.output_path:
        text += f"\n\nOutput: {final.output_path} in your home folder."
    if retry is not None:
        text += f"\n\nIt will be tried again at {retry.not_before:%Y-%m-%d %H:%M} UTC."
    tell_owner(
        ctx.notify, f"job.{final.state}", r.user, subject, text,
        job=r.job.id, run=final.id, attempt=final.attempt, output=final.output_path,
    )  # fmt: skip


def _user_reason(exc: BaseException) -> str:
    if isinstance(exc, RestoreFailed):
        return exc.user_message()
    if isinstance(exc, Error):
        return exc.get_message()
    if isinstance(exc, OSError):
        return f"the home folder could not be used: {exc.strerror or exc}"
    return "an internal error occurred"


def _human(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s"


async def _beat(ctx: JobsContext, r: Run, body: asyncio.Future[Any]) -> None:
    """Renew the claim and the lease, report the server's activity; stop the run on a
    cancel request or when another process took the run over."""
    last_activity = 0.0
    while not body.done():
        await asyncio.sleep(ctx.heartbeat)
        now = ctx.lc.now()
        try:
            if await _db(jq.heartbeat, ctx.lc.db, r.run.id, ctx.worker, now):
                r.stop_reason, r.stop_state = "cancelled by request", jq.CANCELLED
                body.cancel()
                return
            if r.lease_id:
                duration = dt.timedelta(seconds=r.job.timeout) + LEASE_MARGIN
                await _db(queries.renew_lease, ctx.lc.db, r.lease_id, duration, now)
        except jq.ClaimLost:
            r.stop_reason = "interrupted: another hometier process took the run over"
            body.cancel()
            return
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the run
            log.warning("heartbeat of run %s: %s", r.run.id, exc)
        if (
            r.token
            and r.server is not None
            and time.monotonic() - last_activity > ctx.activity_interval
        ):
            try:
                stamp = now.isoformat().replace("+00:00", "Z")
                await ctx.hub.activity(r.user, r.server, r.token, stamp)
                last_activity = time.monotonic()
            except HubCallFailed as exc:
                log.info("activity of run %s: %s", r.run.id, exc)


async def _body(ctx: JobsContext, r: Run) -> None:
    lc, job = ctx.lc, r.job
    user = job.user
    actor = f"job:{job.id}:run:{r.run.id}"
    now = lc.now()
    # 1. The lease, then the files on the volume.
    home_path = lc.layout.path(user)
    await _db(queries.get_or_create_home, lc.db, user, str(home_path), now, actor="jobs")
    duration = dt.timedelta(seconds=job.timeout) + LEASE_MARGIN
    lease = await _db(queries.acquire_lease, lc.db, user, actor, f"job {job.name}", duration, now)
    r.lease_id = lease.id
    await _db(jq.note_resources, lc.db, r.run.id, ctx.worker, lease_id=lease.id)
    await _db(restore_home, lc, user, actor)
    r.mark("home ready")
    # 2. The source, and the secrets.
    home = lc.layout.path(user)
    data = await _db(files.run_as_owner, home, files.read_source, job.path, user, ctx.max_source)
    assert isinstance(data, bytes)
    if job.kind == "notebook":
        r.nb = notebook.load(data, job.path)
    else:
        r.nb = notebook.from_script(data.decode("utf-8", "replace"))
    notebook.inject_parameters(r.nb, dict(job.parameters or {}))
    values = await _db(_unseal, ctx, user, list(job.secrets or []))
    r.masker = notebook.Masker(list(values.values()))
    # 3. The server.
    await _ensure_server(ctx, r)
    r.mark("server ready")
    # 4. The kernel and the cells.
    servers = await ctx.hub.servers(user)
    assert r.server is not None and r.token is not None
    url = ctx.hub.server_url(servers.get(r.server) or {})
    r.kernel = Kernel(url, r.token)
    await r.kernel.start(ctx.kernel_name, posixpath.dirname(job.path))
    if r.kernel.language != "python" and (job.parameters or values):
        raise KernelFailed(
            f"parameters and secrets need a Python kernel; this one runs {r.kernel.language}"
        )
    r.mark("kernel ready")
    if values:
        await r.kernel.execute(notebook.secrets_code(values), silent=True)
    for index, cell in enumerate(r.nb.cells, start=1):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        cell.outputs = []
        reply = await r.kernel.execute(cell.source, on_output=_collector(ctx, r, cell))
        cell.execution_count = reply.get("execution_count")
        if reply.get("status") == "error" and "raises-exception" not in cell.metadata.get(
            "tags", []
        ):
            raise CellFailed(index, reply.get("ename", "an error"), reply.get("evalue", "")[:300])


def _unseal(ctx: JobsContext, user: str, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    if ctx.sealer is None:
        raise CannotUnseal()
    sealed = jq.sealed_secrets(ctx.lc.db, user, names)
    return {n: ctx.sealer.unseal(t).decode("utf-8", "replace") for n, t in sealed.items()}


def _collector(ctx: JobsContext, r: Run, cell: Any) -> Any:
    return lambda output: _add(ctx, r, cell, output)


def _add(ctx: JobsContext, r: Run, cell: Any, output: dict[str, Any]) -> None:
    if output.get("output_type") == "clear_output":
        cell.outputs = []
        return
    output = r.masker.any(output)
    size = notebook.output_size(output)
    r.output_bytes += size
    if r.output_bytes > ctx.max_output:
        raise OutputTooLarge(ctx.max_output)
    outs = cell.outputs
    if (
        output.get("output_type") == "stream"
        and outs
        and outs[-1].get("output_type") == "stream"
        and outs[-1].get("name") == output.get("name")
    ):
        outs[-1]["text"] += output.get("text", "")
    else:
        outs.append(notebook.nbf().from_dict(output))


async def _ensure_server(ctx: JobsContext, r: Run) -> None:
    job, user = r.job, r.job.user
    servers = await ctx.hub.servers(user)
    wanted = job.server
    if wanted == "":
        default = servers.get("")
        name = "" if default is not None and default.get("ready") else f"job-{r.run.id}"
    elif wanted == "new":
        name = f"job-{r.run.id}"
    else:
        name = wanted
    current = servers.get(name)
    if current is not None and not current.get("ready"):
        raise ServerBusy(name or "(default)")
    minted = await ctx.hub.mint(
        user, run_scopes(user, name), job.timeout + 120, f"hometier job {job.id} run {r.run.id}"
    )
    r.token, r.token_id, r.server = minted.token, minted.id, name
    start = current is None
    # Written before the spawn: whoever cleans up after a crash must stop this server.
    await _db(
        jq.note_resources, ctx.lc.db, r.run.id, ctx.worker,
        token_id=minted.id, server_name=name, server_started=start,
    )  # fmt: skip
    if start:
        r.started_server = True
        try:
            await ctx.hub.start(
                user, name, dict(job.profile or {}), minted.token, ctx.spawn_timeout
            )
        except SpawnFailed as exc:
            others = [n or "default" for n, s in servers.items() if s is not None]
            if others:
                raise SpawnFailed(
                    name,
                    f"{exc.args[1]} (your server {', '.join(others)} is running: if your home "
                    "is a volume that cannot be mounted twice, run the job on that server)",
                ) from None
            raise


async def _cleanup(ctx: JobsContext, r: Run) -> str | None:
    """Write the output, then stop exactly what the run started. Returns the output's
    path in the home, if one was written."""
    output = None
    if r.kernel is not None:
        try:
            await r.kernel.shutdown()
        except Exception as exc:  # noqa: BLE001 - the server goes away with the run anyway
            log.warning("run %s: the kernel could not be shut down: %s", r.run.id, exc)
    if r.nb is not None and r.kernel is not None:
        try:
            output = await _db(_write, ctx, r)
        except Exception as exc:  # noqa: BLE001 - the run's outcome is recorded regardless
            log.warning("run %s: the output could not be written: %s", r.run.id, exc)
    try:
        await release(ctx, r.user, r.server, r.started_server, r.token_id, r.lease_id, r.token)
    except Exception:  # noqa: BLE001
        log.exception("run %s: cleanup failed", r.run.id)
    return output


def _write(ctx: JobsContext, r: Run) -> str:
    tz = r.job.timezone or "UTC"
    from hometier.jobs.schedule import timezone

    stamp = r.run.scheduled_for.astimezone(timezone(tz)).strftime("%Y-%m-%dT%H%M")
    r.nb.metadata["hometier"] = {
        "job": r.job.id,
        "run": r.run.id,
        "attempt": r.run.attempt,
        "scheduled_for": r.run.scheduled_for.isoformat(),
        "finished_at": ctx.lc.now().isoformat(),
    }
    if r.job.kind == "notebook":
        data = notebook.nbf().writes(r.nb).encode()
    else:
        data = notebook.as_log(r.nb).encode()
    data = r.masker.text(data.decode()).encode()
    if len(data) > ctx.max_output + 1024 * 1024:
        raise OutputTooLarge(ctx.max_output)
    home = ctx.lc.layout.path(r.user)
    out = files.run_as_owner(home, files.write_output, r.job.path, stamp, data, r.job.keep)
    return str(out)


async def release(
    ctx: JobsContext,
    user: str,
    server: str | None,
    started: bool,
    token_id: str | None,
    lease_id: str | None,
    token: str | None = None,
) -> None:
    """Stop the server a run started (and remove it if it is a ``job-`` server), revoke
    its token, release its lease. Best effort and idempotent: also used after a crash."""
    if started and server is not None:
        try:
            if token is None:
                token = (
                    await ctx.hub.mint(user, run_scopes(user, server), 600, "hometier cleanup")
                ).token
                extra = True
            else:
                extra = False
            await ctx.hub.stop(
                user, server, token, remove=server.startswith("job-"), timeout=ctx.spawn_timeout
            )
            if extra:
                await _revoke_by_value(ctx, user, token)
        except (Error, OSError) as exc:
            log.warning("could not stop server %s/%s of a job: %s", user, server, exc)
    if token_id:
        try:
            await ctx.hub.revoke(user, token_id)
        except HubCallFailed as exc:
            log.warning("could not revoke a job token of %s: %s", user, exc)
    if lease_id:
        try:
            await _db(queries.release_lease, ctx.lc.db, lease_id, ctx.lc.now())
        except Error as exc:
            log.warning("could not release lease %s: %s", lease_id, exc)


async def _revoke_by_value(ctx: JobsContext, user: str, token: str) -> None:
    # A token can always find out who it is, and so its own id.
    try:
        _, me = await ctx.hub.call("GET", "/user", token=token)
        tid = (me or {}).get("token_id")
        if tid:
            await ctx.hub.revoke(user, str(tid))
    except HubCallFailed:
        pass


__all__ = ["CellFailed", "ServerBusy", "execute_run", "release"]
