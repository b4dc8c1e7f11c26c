"""A sweep's results table as Parquet with typed columns: numbers stay numbers (int64 or
float64), text is text, booleans are booleans and blanks are nulls, so a dataframe library
reads it back without guessing types from text as it must with CSV."""

from __future__ import annotations

from typing import Any

from orchestrator.server.sweep_results import _csv_cell
from orchestrator.sweep_models import ResultsTable

PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
# the fixed columns keep their type even while every cell is blank (a sweep still running)
FIXED_TYPES = {"index": "int64", "job_id": "string", "status": "string", "exit_code": "int64",
               "duration_s": "double", "status_reason": "string", "outputs_error": "string"}
INT64 = (-(2**63), 2**63 - 1)


def results_parquet(table: ResultsTable) -> bytes:
    """The table's bytes as one Parquet file, columns in the table's order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name in table.columns:
        values = [row.get(name) for row in table.rows]
        kind = FIXED_TYPES.get(name) or column_type(values)
        if kind == "string":
            values = [None if v is None else str(_csv_cell(v)) for v in values]
        arrays[name] = pa.array(values, type=pa.type_for_alias(kind))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), sink)
    return sink.getvalue().to_pybytes()


def column_type(values: list[Any]) -> str:
    """The narrowest Arrow type holding every value: bool, int64, double, string (a column
    mixing numbers and text holds text, each number written as in the CSV), or null."""
    kinds = {_kind(v) for v in values if v is not None}
    if not kinds:
        return "null"
    if len(kinds) == 1:
        return kinds.pop()
    return "double" if kinds <= {"int64", "double"} else "string"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64" if INT64[0] <= value <= INT64[1] else "double"
    if isinstance(value, float):
        return "double"
    return "string"
