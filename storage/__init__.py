"""fsspec-backed storage of binaries, inputs, logs and outputs."""

from storage.fsstore import AtomicWriter, Storage, StoredObject

__all__ = ["AtomicWriter", "Storage", "StoredObject"]
