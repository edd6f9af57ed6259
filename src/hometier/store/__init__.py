"""Object storage by URL.

Terms: a *store* is a flat namespace of immutable *objects* addressed by *keys* (slash-
separated strings) under one URL: ``file://PATH``, ``s3://bucket/prefix``, ``gs://bucket``,
``az://container``, ``memory://``. Everything above this package sees only ``Store``; the
backend is obstore. Transient failures are retried with exponential backoff and full
jitter; permanent ones (missing object, no such bucket, access denied) raise at once.
Every request and every byte is counted per operation kind (``Store.stats``).
"""

from hometier.store.base import ObjectInfo, Store, StoreStats
from hometier.store.errors import (
    AccessDenied,
    BucketNotFound,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from hometier.store.url import open_store

__all__ = [
    "AccessDenied",
    "BucketNotFound",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "Store",
    "StoreError",
    "StoreStats",
    "StoreUnavailable",
    "open_store",
]
