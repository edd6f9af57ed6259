"""Jobs on behalf of users: scheduled notebooks and scripts that run as their owner.

Terms (the tables are in ``hometier.state.jobs``):

- A *job* names a notebook (``.ipynb``) or a Python script in its owner's home, a
  *schedule* (cron with a time zone, ``schedule``; or once, ``run_at``), *parameters*
  (injected after the cell tagged ``parameters``, as papermill does), *secrets* (names
  of sealed values, given to the kernel's environment only), a timeout, retries, the
  *server* to run on and how many *outputs* to keep.
- A *run* is one attempt. The ``Scheduler`` (one per hometier process, any number of
  processes on one PostgreSQL) fires due jobs, claims queued runs and hands each to
  ``runner.execute_run``: lease the home (restored first if archived), reuse the
  user's running server or start a named server ``job-…`` with a token minted for this
  run alone, execute the cells in a kernel of that server over the Jupyter kernel
  protocol, write the executed copy into the home as the user, stop what the run
  started, release the lease, tell the owner.

Modules: ``spec`` (validating a definition), ``schedule`` (cron), ``files`` (reading a
notebook and writing outputs in a home, root-safe), ``notebook`` (parameters, masking,
sizes), ``kernel`` (the kernel protocol over a websocket), ``hubapi`` (the JupyterHub
REST calls), ``runner`` (one run), ``scheduler`` (the loop, claims, recovery),
``notify`` (telling the owner), ``context`` (what they share).
"""
