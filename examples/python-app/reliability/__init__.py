"""reliability: the failure probability of a steel tie rod under an uncertain load, by Monte Carlo
across the cluster. An application to upload once and run by entry point (see ../README.md)."""
