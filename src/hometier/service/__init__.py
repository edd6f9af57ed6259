"""The hometier HTTP service: JSON API, metrics, health (and, later, the dashboard).

Registered with JupyterHub as a service: every request is authenticated by a
JupyterHub token (header) or the Hub's OAuth cookie, and authorized by scopes:
a user acts on their own home only; ``custom:hometier:restore!user=U`` (the one-spawn
token) may only request and follow U's restore; ``custom:hometier:lease!user=U`` may
hold leases on U's home; ``custom:hometier:admin`` may do everything. The service is
stateless beside the database: several replicas may share one PostgreSQL.
"""
