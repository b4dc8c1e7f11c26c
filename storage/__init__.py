"""fsspec-backed storage of binaries, inputs, logs and outputs."""

from storage.fsstore import AtomicWriter, Storage, StorageError, StoredObject

__all__ = ["AtomicWriter", "Storage", "StorageError", "StoredObject"]
