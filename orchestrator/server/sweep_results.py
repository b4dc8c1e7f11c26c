"""A sweep's results table: a row per run with its variables and scalar outputs, a column
per output key (renamed where it would collide with a variable or a fixed column), a page of
it, and the same table as CSV."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from orchestrator.sweep_models import (
    EXPLAINING_COLUMNS,
    RESULT_COLUMNS,
    ResultsPage,
    ResultsTable,
    output_columns,
)

SweepRows = list[tuple[int, str, str, str | None, dict[str, Any], dict[str, Any] | None]]


def results_table(names: list[str], runs: SweepRows) -> ResultsPage:
    """`runs`: (index, job id, status, status reason, variables, result) of each run, in
    order. A blank output cell is explained: the run's status and reason, and for a
    completed run, what went wrong reading its outputs (`outputs_error`)."""
    output_keys: dict[str, None] = {}
    for *_, result in runs:
        for key, value in ((result or {}).get("outputs") or {}).items():
            if _is_scalar(value):
                output_keys.setdefault(key, None)
    columns = output_columns(sorted(output_keys), {*RESULT_COLUMNS, *EXPLAINING_COLUMNS, *names})
    rows = []
    for index, job_id, status, reason, variables, result in runs:
        result = result or {}
        outputs = result.get("outputs") or {}
        row = {"index": index, "job_id": job_id, "status": status, "status_reason": reason,
               "exit_code": result.get("exit_code"), "duration_s": result.get("duration_s"),
               "outputs_error": result.get("error") if status == "COMPLETED" else None}
        row.update({name: variables.get(name) for name in names})
        row.update({column: _scalar_or_none(outputs.get(key)) for key, column in columns.items()})
        rows.append(row)
    return ResultsPage(columns=[*RESULT_COLUMNS, *names, *columns.values(), *EXPLAINING_COLUMNS],
                       rows=rows, outputs={column: key for key, column in columns.items()})


def results_page(names: list[str], runs: SweepRows, limit: int) -> ResultsPage:
    """The page of the first `limit` of `runs` (read one past the page: that one's presence
    says whether a next page exists, so the last page says so without an empty one after)."""
    page = results_table(names, runs[:limit])
    page.next = runs[limit - 1][0] if len(runs) > limit else None
    return page


def results_csv(table: ResultsTable) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table.columns)  # \r\n: values with \r get quoted
    writer.writeheader()
    for row in table.rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or (isinstance(value, (bool, int, str)) or
                             (isinstance(value, float) and math.isfinite(value)))


def _scalar_or_none(value: Any) -> Any:
    return value if _is_scalar(value) else None
