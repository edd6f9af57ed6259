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
- *locator*: objects under ``locators/<snapshot id>/`` with the index entries of exactly
  the blobs one snapshot reaches, so that reading it costs O(that home) (format 2).
- *config*: the object that says this location is a repository (and which version).
- *index cache*: not in the bucket: the whole index on local disk (``blobindex``), what
  backup deduplicates against; no process holds the whole index in memory.

Write order is an invariant: packs, then the index that lists them, then the snapshot's
locator, then the snapshot.
"""

from hometier.repo.ids import BlobId, BlobType, PackId, SnapshotId
from hometier.repo.repository import Repository, RepositoryNotFound

__all__ = ["BlobId", "BlobType", "PackId", "Repository", "RepositoryNotFound", "SnapshotId"]
