"""The lifecycle of a home: ``active → archiving → archived → restoring → active``.

Terms: *activity* is evidence that a home is in use (a running server or the Hub's
``last_activity``, recent file times, a *lease*, a login); the *policy* decides from it
who is idle (``select_idle``, pure, time injected); the *cycle* archives one home with
every safety check and moves its files into a *quarantine* on the same volume, kept for
a while; *recovery* finishes or undoes what a crash interrupted; a *restore* brings a
home back, from what is still on the volume when it can, else from the repository;
*retention* forgets old snapshots and prunes unused data. The database (``state``)
decides every transition atomically; a per-home file lock serialises moving files.
"""
