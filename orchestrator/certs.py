"""Certificates for a cluster's TLS, as files: `orchestrator certs FOLDER`.

Dask's TLS admits only peers presenting a certificate the cluster's CA signed. For a cluster
of your own, one self-signed certificate that is its own CA, presented by every party
(scheduler, workers, the server's client), is enough; keep the folder readable only by the
accounts that run them. A site with its own CA uses its own certificates instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distributed.security import Security


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert: Path
    key: Path

    @property
    def settings(self) -> dict[str, Path]:
        """Settings (ORCHESTRATOR_TLS_*) that present these to the cluster."""
        return {"tls_ca_file": self.ca_file, "tls_cert": self.cert, "tls_key": self.key}

    @property
    def flags(self) -> list[str]:
        """`dask scheduler`, `dask worker`, `orchestrator serve` and `orchestrator worker` all
        take the same three flags."""
        return [arg for name, path in self.settings.items()
                for arg in ("--" + name.replace("_", "-"), str(path))]

    def security(self) -> Security:
        """A Security for any role (client, scheduler, worker) in Python."""
        paths = {"tls_ca_file": str(self.ca_file)}
        for role in ("client", "scheduler", "worker"):
            paths |= {f"tls_{role}_cert": str(self.cert), f"tls_{role}_key": str(self.key)}
        return Security(require_encryption=True, **paths)


def write_tls_files(folder: Path) -> TlsFiles:
    """A new self-signed certificate and its key, 0600 files in a new 0700 folder."""
    made = Security.temporary()
    folder.mkdir(mode=0o700, parents=True)
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    for path, text in [(files.ca_file, made.tls_ca_file), (files.cert, made.tls_client_cert),
                       (files.key, made.tls_client_key)]:
        path.touch(mode=0o600)
        path.write_text(text)
    return files
