"""Tell people what happened: admins when an archive or a restore fails, users when their
home is archived (and how it comes back).

One call for every sender: ``Notifier.notify(event, user, subject, text, **fields)``.
``event`` is a short name (``archive-failed``, ``restore-failed``, ``archived``, or any
other a caller defines); ``user`` is the home's user or None; ``fields`` are plain JSON
values added to the webhook's payload. It never raises and never blocks its caller:
messages go out on one background thread, a failure to deliver is logged, and the same
``(event, user)`` is sent at most once per ``quiet_for`` (a login storm against a broken
archive sends one message, not five hundred).

Channels, each optional (``c.Notifier.*``):

- **webhook**: ``POST webhook_url`` with a JSON body ``{"event", "user", "audience",
  "subject", "text", "time", ...fields}`` (Slack/Teams/Mattermost bridges, Alertmanager
  receivers, a ticket system);
- **e-mail** through ``smtp_host``: admins at ``admin_emails``; a user at
  ``user_email_template`` (``"{username}@example.org"``) for the events in
  ``user_events``.

JupyterHub has no API to post an announcement (its announcements are configuration,
``c.JupyterHub.template_vars``), so the Hub is not a channel.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import smtplib
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from email.message import EmailMessage
from typing import Any

from traitlets import Bool, Float, Integer, List, Unicode, default
from traitlets.config import Configurable

log = logging.getLogger(__name__)

ADMIN_EVENTS = frozenset({"archive-failed", "restore-failed"})
"""Events for the admins; every other event is about one user's home, for that user."""


class Notifier(Configurable):
    """Notifications (``c.Notifier.*``): a webhook and/or e-mail."""

    webhook_url = Unicode(
        help="POST a JSON message here on every notification. Env: HOMETIER_WEBHOOK_URL."
    ).tag(config=True)
    webhook_timeout = Float(5.0, help="Seconds to wait for the webhook to answer.").tag(config=True)
    smtp_host = Unicode(help="SMTP server for e-mail (no e-mail when empty).").tag(config=True)
    smtp_port = Integer(25, help="Port of the SMTP server.").tag(config=True)
    smtp_starttls = Bool(False, help="Use STARTTLS on the SMTP connection.").tag(config=True)
    smtp_user = Unicode(help="SMTP login (none when empty).").tag(config=True)
    smtp_password = Unicode(help="SMTP password. Env: HOMETIER_SMTP_PASSWORD.").tag(config=True)
    mail_from = Unicode("hometier@localhost", help="The From address of e-mails.").tag(config=True)
    admin_emails = List(Unicode(), help="Addresses told about failed archives and restores.").tag(
        config=True
    )
    user_email_template = Unicode(
        help="A user's address, `{username}` replaced (e.g. `{username}@example.org`); "
        "users get no e-mail when empty."
    ).tag(config=True)
    user_events = List(
        Unicode(), ["archived"], help="Events a user is e-mailed about (their own home)."
    ).tag(config=True)
    quiet_for = Float(
        3600.0, help="Seconds during which the same event for the same user is sent once."
    ).tag(config=True)

    @default("webhook_url")
    def _webhook_default(self) -> str:
        return os.environ.get("HOMETIER_WEBHOOK_URL", "")

    @default("smtp_password")
    def _password_default(self) -> str:
        return os.environ.get("HOMETIER_SMTP_PASSWORD", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify")
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str | None], float] = {}
        self.clock: Callable[[], float] = time.monotonic

    @property
    def enabled(self) -> bool:
        """True if any channel is configured for admins (so "your administrator has been
        notified" is true)."""
        return bool(self.webhook_url or (self.smtp_host and self.admin_emails))

    def notify(
        self, event: str, user: str | None, subject: str, text: str, **fields: Any
    ) -> Future[None] | None:
        """Send one notification on every configured channel, in the background.

        Returns the delivery's future (tests wait on it), or None when nothing is sent
        (no channel, or the same ``(event, user)`` within ``quiet_for``). Never raises.
        """
        try:
            with self._lock:
                key = (event, user)
                now = self.clock()
                last = self._sent.get(key)
                if last is not None and now - last < self.quiet_for:
                    return None
                if not self._channels(event, user):
                    return None
                self._sent[key] = now
            payload = {
                "event": event,
                "user": user,
                "audience": "admins" if event in ADMIN_EVENTS else "user",
                "subject": subject,
                "text": text,
                "time": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
                **fields,
            }
            return self._pool.submit(self._deliver, payload)
        except Exception:  # noqa: BLE001 - a notification must never break its caller
            log.exception("notification %s for %s not sent", event, user)
            return None

    def _channels(self, event: str, user: str | None) -> list[str]:
        out = []
        if self.webhook_url:
            out.append("webhook")
        if self.smtp_host and self._recipients(event, user):
            out.append("email")
        return out

    def _recipients(self, event: str, user: str | None) -> list[str]:
        if event in ADMIN_EVENTS:
            return list(self.admin_emails)
        if user and self.user_email_template and event in self.user_events:
            return [self.user_email_template.format(username=user)]
        return []

    def _deliver(self, payload: dict[str, Any]) -> None:
        event, user = payload["event"], payload["user"]
        if self.webhook_url:
            try:
                self._post(payload)
            except Exception as exc:  # noqa: BLE001 - logged; the other channel still goes
                log.warning("webhook for %s of %s failed: %s", event, user, exc)
        to = self._recipients(event, user) if self.smtp_host else []
        if to:
            try:
                self._mail(to, payload["subject"], payload["text"])
            except Exception as exc:  # noqa: BLE001
                log.warning("e-mail for %s of %s failed: %s", event, user, exc)

    def _post(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, default=str).encode()
        req = urllib.request.Request(
            self.webhook_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "hometier"},
        )
        with urllib.request.urlopen(req, timeout=self.webhook_timeout) as resp:  # noqa: S310
            resp.read(65536)

    def _mail(self, to: list[str], subject: str, text: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.mail_from
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg.set_content(text)
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.webhook_timeout) as smtp:
            if self.smtp_starttls:
                smtp.starttls()
            if self.smtp_user:
                smtp.login(self.smtp_user, self.smtp_password)
            smtp.send_message(msg)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)


__all__ = ["ADMIN_EVENTS", "Notifier"]
