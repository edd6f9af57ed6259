"""The JupyterHub custom scopes of hometier, shared by the service and the Hub config."""

ADMIN = "custom:hometier:admin"
RESTORE = "custom:hometier:restore"
LEASE = "custom:hometier:lease"
READ = "custom:hometier:read"
JOBS = "custom:hometier:jobs"
ATTACH = "custom:hometier:attach"

CUSTOM_SCOPES: dict[str, dict[str, str]] = {
    ADMIN: {"description": "Administer hometier: every home, archive now, exempt, list all."},
    RESTORE: {"description": "Request and follow the restore of a home."},
    LEASE: {"description": "Hold a home hot with leases (jobs, extra servers)."},
    READ: {"description": "See a home's state and browse and download its snapshots."},
    JOBS: {"description": "Manage a user's scheduled jobs and their secrets."},
}

# Registered by the bucket folders' Hub integration (hub.mounts, hub.k8s_mounts) only.
MOUNT_SCOPES: dict[str, dict[str, str]] = {
    ATTACH: {"description": "Attach and release the bucket folders of a user's servers."},
}
