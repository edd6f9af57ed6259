"""Bucket folders: an S3 bucket (or a prefix of one) as a folder in every server that may
use it, through an existing FUSE client (s3fs-fuse) on hosts and an existing CSI driver
on Kubernetes. hometier writes no file system of its own.

Terms:

- A *bucket folder* is an admin's registration (``folders``, ``spec``): endpoint, bucket,
  prefix, sealed credentials, who may use it (JupyterHub groups and users, read-only or
  read-write each), client options and the default path in servers.
- A *host mount* is one s3fs daemon's mount on one host, shared by every server there
  with the same folder revision, access mode and owner (its *key*). Its *anchor* is a
  shared bind of it; each server gets a *consumer*: a bind of the anchor, a slave of it,
  read-only where the server may only read (the daemon itself is then read-only too).
- An *attachment* is one server's consumer, counted in the database (``refs``) under
  the host mount's row lock; the last release starts an idle delay, after which the
  daemon is unmounted unless a process still uses it.
- A *generation* is one daemon's life: a dead or hung daemon is replaced by the next
  generation, mounted on top of the anchor so that every consumer sees it at once.

Modules: ``spec`` (pure rules), ``folders`` (the registry), ``objects`` (browse and
download through obstore; the preflight), ``client`` (s3fs), ``probe`` (health, who uses
a mount), ``mountinfo``, ``syscalls``, ``host`` (the kernel side), ``manager`` (attach,
release), ``reconcile`` (the check loop). This package sits beside ``lifecycle``: it uses
``state`` and ``store``; the service, hub and CLI layers expose it.
"""
