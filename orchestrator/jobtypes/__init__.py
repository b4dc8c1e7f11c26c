"""Job types: Seed manifests (as NGA Scale uses them) read, checked and applied to jobs.

Pure code: no Dask, no server, no I/O, so the API, the scheduler side and the tests share it.
`manifest` holds the models that accept Seed's JSON as-is; `validation` reports what is wrong
with a job type (Scale's error and warning codes) and checks a job's inputs and outputs
against its type.
"""
