"""The server's process: the REST API (`api`), the services behind it (jobs, sweeps,
binaries, accounts), the engine that carries out their decisions on Dask, and the ledger
(SQLite) that records them. Modules here import nothing at package level, so importing one
does not import the rest."""
