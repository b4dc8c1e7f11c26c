"""fsspec-backed storage of binaries, inputs, logs and outputs."""

from orchestrator.storage.fsstore import AtomicWriter, Storage, StoredObject, is_storage_failure

__all__ = ["AtomicWriter", "Storage", "StoredObject", "is_storage_failure"]
