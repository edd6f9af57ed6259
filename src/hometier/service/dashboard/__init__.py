"""The dashboard: server-rendered pages beside the API, behind the Hub's OAuth login.

- ``/`` — the signed-in user's own home: its state, its snapshots, a restore button.
- ``/homes/USER`` — one home (its user, or an admin: then also sizes in the bucket, the
  event log and the admin actions).
- ``/homes/USER/snapshots/ID/browse?path=…`` — a folder of a snapshot; files and
  folders download through the API's download endpoints, which accept the same cookie.
- ``/admin`` — totals, bytes on each tier over time, every home, failures.

Authorization is the API's: ``Identity.may("read", user)`` for a home, ``is_admin`` for
the overview. Actions are POST forms checked against the Hub's XSRF token. Terms:
*hot* bytes are on the POSIX volume, *archived* bytes live only in the bucket (as the
homes' logical size), *stored* bytes are what the bucket holds after dedup and
compression.
"""
