"""Shared spaces: folders on a POSIX volume shared by JupyterHub users and groups.

Terms: a *space* has a *level* — ``public`` (every user reads), ``private`` (its members)
or ``secret`` (its members; hidden from everyone else, archived into a repository of its
own) — and a *kind*, ``data`` or ``software`` (read-only LMod collections). *Members* are
JupyterHub users and groups with the role ``reader`` or ``writer``; the *owner* manages
the space and always writes. JupyterHub's groups are the truth: *reconcile* expands them
and makes the volume say it — a POSIX group per space, and POSIX ACLs (access and
default) on every folder and file, written through descriptors (``sweep``), enforced by
the kernel. The *gate* is the ACL of the space's folder itself: it is written first, so
losing access takes effect at the next system call. *Mounts* are what each user's
server gets; *tiering* archives idle spaces with the homes' engine.

Modules: ``names`` (validation), ``acl`` (the kernel's ACL format; pure), ``sweep``
(descriptor walk), ``posix`` (root, groups, users), ``members`` (the Hub's groups; pure
expansion), ``volume``, ``reconcile``, ``manage``, ``mounts``, ``tiering``, ``context``.
This package sits beside ``lifecycle``: it uses ``state``, ``engine``, ``repo`` and
``store``, and ``service``, ``hub`` and ``cli`` expose it.
"""
