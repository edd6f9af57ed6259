"""JupyterHub integrations: restore a home before its server starts.

- ``spawn_hook``: a ``pre_spawn_hook`` / spawner mixin for local spawners
  (SimpleLocalProcess, LocalProcess/SystemUser, Docker on one host) that asks the
  hometier service to restore and shows its progress on the spawn page.
- ``k8s``: pure ``make_*`` builders for KubeSpawner's init container and a function
  that wires them into ``c.KubeSpawner``.
- ``tljh``: a The Littlest JupyterHub plugin.
- ``tokens``: the one-spawn restore token a hook mints for the init container.
- ``config``: ``configure_hub(c, ...)``: the service, its custom scopes and roles.

These modules run inside the Hub (or an init container): they speak HTTP to the
service and never touch the database or the repository.
"""
