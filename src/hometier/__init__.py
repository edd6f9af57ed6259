"""hometier: archive idle JupyterHub homes to object storage, restore them at login.

Layers, each a subpackage depending only on the ones below it (see docs/architecture.md):
store -> repo -> engine -> state -> lifecycle -> service | hub | cli.
"""

__version__ = "0.2.0"
