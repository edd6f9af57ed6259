"""Archive a directory into a snapshot, restore a snapshot into a directory, check.

Terms: *source* is the folder archived (a home); *target* the folder restored into;
*staging* the hidden folder a restore writes before moving into place; *parent* the
previous snapshot whose unchanged files an incremental backup reuses without reading.
This package knows nothing of users, hubs or databases: callers pass plain arguments.
"""

from hometier.engine.archive import BackupError, backup
from hometier.engine.check import CheckFailed, CheckReport, check
from hometier.engine.restore import RestoreError, TargetNotEmpty, restore

__all__ = [
    "BackupError",
    "CheckFailed",
    "CheckReport",
    "RestoreError",
    "TargetNotEmpty",
    "backup",
    "check",
    "restore",
]
