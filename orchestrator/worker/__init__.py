"""What runs on a Dask worker: the task functions (`runner`), one executor per kind of job,
the switch to the job's own identity (`jobuser`) and the upload of outputs. Imports nothing
of the server, so a worker that unpickles a task stays light."""
