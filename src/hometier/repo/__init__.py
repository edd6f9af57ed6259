"""The repository format: what hometier keeps in object storage.

Terms (see docs/format.md for the byte layouts):
- *blob*: a piece of file content (``DATA``) or an encoded directory (``TREE``),
  identified by its ``BlobId``, the BLAKE3 hash of its plaintext keyed with the
  repository's secret; stored zstd-compressed, or raw when that does not help.
- *pack*: an object under ``packs/`` holding many blobs and a trailer that lists them,
  so the index can be rebuilt from packs alone. Its ``PackId`` is the plain BLAKE3 of
  its bytes.
- *index*: objects under ``index/`` mapping blob -> pack, offset, lengths.
- *tree*: a directory's entries with every POSIX attribute hometier restores.
- *snapshot*: an object under ``snapshots/`` naming a user, a time and a root tree.
- *config*: the one mutable-never object that says this location is a repository.

Write order is an invariant: packs, then the index that lists them, then the snapshot.
"""

from hometier.repo.ids import BlobId, BlobType, PackId, SnapshotId
from hometier.repo.repository import Repository, RepositoryNotFound

__all__ = ["BlobId", "BlobType", "PackId", "Repository", "RepositoryNotFound", "SnapshotId"]
