"""A sweep's results as a pandas DataFrame, assembled page by page.

Each page of `GET /sweeps/{id}/results?after=&limit=` becomes one Arrow array per column and
is dropped; the frame is made once from those arrays, Arrow's memory freed column by column
as pandas takes it, so a million-run table is never held twice. The dtypes are those pandas
infers from the whole table's rows (`pandas.DataFrame(rows)`): Arrow infers the same for the
scalars a table holds (ints with blanks become float64, booleans with blanks objects), and a
column Arrow cannot type (numbers mixed with text, nested values) goes to pandas as values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Union

from orchestrator.errors import ValidationFailed
from orchestrator.sweep_models import (
    EXPLAINING_COLUMNS,
    RESULT_COLUMNS,
    RESULTS_PAGE_MAX,
    ResultsPage,
    output_columns,
)

if TYPE_CHECKING:
    import pandas
    import pyarrow

Chunk = Union["pyarrow.Array", list[Any]]  # a page's cells of one column: Arrow, or values
Fetch = Callable[[int | None, int], ResultsPage]  # (after, limit) -> the page


def pages(fetch: Fetch, page_size: int) -> Iterator[ResultsPage]:
    """Every page in index order, each fetched once the one before has been handled."""
    if not 1 <= page_size <= RESULTS_PAGE_MAX:
        raise ValidationFailed(f"page_size is 1 to {RESULTS_PAGE_MAX}",
                               {"page_size": f"must be 1 to {RESULTS_PAGE_MAX}"})
    after = None
    while True:
        page = fetch(after, page_size)
        yield page
        if page.next is None:
            return
        after = page.next


class FrameBuilder:
    """Pages' columns, merged by output key: a page names only the outputs its own runs
    report, so a key first seen on a later page gets blanks for the rows before it."""

    def __init__(self) -> None:
        self.fixed: dict[str, list[Chunk]] = {}  # the fixed columns and the variables
        self.outputs: dict[str, list[Chunk]] = {}  # by outputs.json key
        self.columns: list[str] | None = None  # the first page's fixed columns, in order
        self.rows = 0

    def add(self, page: ResultsPage) -> None:
        if self.columns is None:
            self.columns = [column for column in page.columns if column not in page.outputs]
        count = len(page.rows)
        if not count:
            return
        for column in page.columns:
            chunk = _chunk([row.get(column) for row in page.rows])
            key = page.outputs.get(column)
            if key is None:
                self.fixed.setdefault(column, []).append(chunk)
            else:
                self.outputs.setdefault(key, [_nulls(self.rows)] if self.rows else []).append(chunk)
        reported = set(page.outputs.values())
        for key, chunks in self.outputs.items():
            if key not in reported:
                chunks.append(_nulls(count))
        self.rows += count

    def frame(self) -> pandas.DataFrame:
        """The table as results() answers it: a row per run indexed by run index, exit_code
        as a nullable integer. Empties the builder."""
        import pandas
        import pyarrow as pa

        fixed = self.columns or list(RESULT_COLUMNS + EXPLAINING_COLUMNS)
        if not self.rows:
            return _finish(pandas.DataFrame([], columns=fixed))
        names = [column for column in fixed if column not in RESULT_COLUMNS + EXPLAINING_COLUMNS]
        keys = sorted(self.outputs)
        named = output_columns(keys, {*RESULT_COLUMNS, *EXPLAINING_COLUMNS, *names})
        sources = [*((c, self.fixed, c) for c in (*RESULT_COLUMNS, *names)),
                   *((named[k], self.outputs, k) for k in keys),
                   *((c, self.fixed, c) for c in EXPLAINING_COLUMNS)]
        arrays: dict[str, pa.ChunkedArray] = {}
        values: dict[int, tuple[str, list[Any]]] = {}  # position -> a column pandas types
        for position, (column, chunks, key) in enumerate(sources):
            merged = _merged(chunks.pop(key))
            if isinstance(merged, list):
                values[position] = (column, merged)
            else:
                arrays[column] = merged
        self.rows = 0
        table = pa.table(arrays)
        arrays.clear()  # the table holds the only reference, so self_destruct can free it
        frame = table.to_pandas(self_destruct=True, split_blocks=True, memory_pool=pa.system_memory_pool())
        del table
        for position, (column, cells) in sorted(values.items()):
            # typed as pandas.DataFrame(rows) types a column: the same path, one cell per row
            frame.insert(position, column, pandas.DataFrame([(cell,) for cell in cells], columns=[column])[column])
        return _finish(frame)


def _finish(frame: pandas.DataFrame) -> pandas.DataFrame:
    import pandas

    frame["exit_code"] = frame["exit_code"].astype("Int64")  # an integer, blank where none
    if int(pandas.__version__.split(".")[0]) >= 3:
        return frame.set_index("index")  # copy-on-write: nothing is copied
    frame.set_index("index", inplace=True)  # pandas 2 copies the frame without inplace
    return frame


def _chunk(values: list[Any]) -> Chunk:
    """Arrow's array of the cells if it is one of the types pandas would infer alike."""
    import pyarrow as pa

    try:
        array = pa.array(values, memory_pool=pa.system_memory_pool())  # see _merged
    except (pa.ArrowException, OverflowError, TypeError, ValueError):  # text and numbers, huge ints
        return values
    if array.type in (pa.null(), pa.bool_(), pa.int64(), pa.float64(), pa.string()):
        return array
    return values  # lists and objects: pandas keeps them as Python values


def _nulls(count: int) -> Chunk:
    import pyarrow as pa

    return pa.nulls(count)


def _merged(chunks: list[Chunk]) -> pyarrow.ChunkedArray | list[Any]:
    """One column from its pages: Arrow when they share a type (blank pages take any, ints
    join floats as pandas makes them float64), else the values for pandas to type. Arrow
    allocates from malloc here, not its own pool: the pages' buffers that pandas frees as it
    copies them then serve the frame's arrays instead of staying reserved in Arrow's pool."""
    import pyarrow as pa

    if all(isinstance(chunk, pa.Array) for chunk in chunks):
        kinds = {chunk.type for chunk in chunks} - {pa.null()}
        if kinds == {pa.int64(), pa.float64()}:
            kinds = {pa.float64()}
        if len(kinds) <= 1:
            kind = kinds.pop() if kinds else pa.null()
            pool = pa.system_memory_pool()
            return pa.chunked_array([chunk.cast(kind, safe=False, memory_pool=pool) for chunk in chunks], type=kind)
    values: list[Any] = []
    for chunk in chunks:
        values.extend(chunk if isinstance(chunk, list) else chunk.to_pylist())
    return values
