"""The dashboard: server-rendered pages beside the API, behind the Hub's OAuth login.

- ``/`` — the signed-in user's own home: its state, its snapshots, a restore button.
- ``/homes/USER`` — one home (its user, or an admin: then also sizes in the bucket, the
  failure's detail, the event log and the admin actions).
- ``/homes/USER/snapshots/ID/browse?path=…`` — a folder of a snapshot; files and
  folders download through the API's download endpoints, which accept the same cookie.
- ``/homes/USER/snapshots/ID/preview?path=…`` (and ``…/image``) — a file shown safely
  (``preview``).
- ``/homes/USER/archive`` — GET asks, POST archives in the background (``actions``,
  ``archives``).
- ``/admin`` — cards, bytes on each tier over time, one page of homes (``admin``).

Authorization is the API's: ``Identity.may("read", user)`` for a home, ``is_admin`` for
the overview. Actions are POST forms checked against the Hub's XSRF token. Terms (see
``summary``): *hot* bytes are homes on the POSIX volume, *archived* bytes are homes that
live only in the bucket (their logical size), *stored* bytes are what every snapshot
added to the bucket after dedup and compression. Errors reach people as one sentence and
a reference (``explain``); dates as people write them, the ISO time in a ``title``.
"""
