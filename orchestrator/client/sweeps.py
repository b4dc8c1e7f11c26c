"""Sweeps in the Python API: building a spec from Python values, and the `Sweep` handle.

`Orchestrator.sweep(...)` turns keyword arguments into the same JSON spec the REST API takes
(so both mean the same), uploads local files and templates, and returns a handle that shows
progress, yields runs as they finish and gives the results as a pandas DataFrame.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestrator.client.backend import Job
from orchestrator.client.handle import LiveHandle
from orchestrator.client.results_frame import FrameBuilder, pages
from orchestrator.errors import validation_failed
from orchestrator.models import JobStatus
from orchestrator.sweep_models import RESULTS_PAGE_MAX, ResultsPage, SweepCreate, SweepRecord

if TYPE_CHECKING:
    import pandas

DESIGNS = ("full_factorial", "monte_carlo", "latin_hypercube", "sobol", "saltelli")
POLL_S = (0.05, 1.0)  # first and longest pause between polls for finished runs
BAR_REFRESH_S = 0.25
LONG_POLL_S = 30.0


def sweep_spec(
    command: str | list[str] | None,
    *,
    variables: Mapping[str, Any] | None,
    design: str | dict[str, Any] | None,
    samples: int | None,
    seed: int | None,
    cases: Any,
    templates: Mapping[str, str | os.PathLike] | None,
    **fields: Any,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The REST spec of a sweep and the local files it needs uploaded (name -> path)."""
    spec: dict[str, Any] = {"command": command, **{k: v for k, v in fields.items() if v is not None}}
    uploads: dict[str, Path] = {}
    if variables is not None:
        spec["variables"] = [_variable(name, generator) for name, generator in variables.items()]
        spec["design"] = _design(design, samples, seed)
    if cases is not None:
        spec.update(_cases(cases))
    if templates:
        spec["templates"] = []
        for target, source in templates.items():
            local = Path(source)
            if local.is_file():
                uploads[local.name] = local
                source = local.name
            spec["templates"].append({"source": str(source), "target": str(target)})
    return spec, uploads


def _variable(name: str, generator: Any) -> dict[str, Any]:
    if isinstance(generator, Mapping):
        return {"name": name, **generator}
    if isinstance(generator, (list, tuple, range)):
        return {"name": name, "values": list(generator)}
    return {"name": name, "values": [generator]}


def _design(design: str | dict[str, Any] | None, samples: int | None, seed: int | None) -> dict[str, Any]:
    if isinstance(design, dict):
        return design
    kind = design or ("full_factorial" if samples is None else "monte_carlo")
    if kind != "full_factorial":
        return {"type": kind, "samples": samples, **({"seed": seed} if seed is not None else {})}
    return {"type": kind}


def _cases(cases: Any) -> dict[str, Any]:
    """Rows as a list of dicts, a pandas DataFrame, or a CSV file path."""
    if isinstance(cases, (str, os.PathLike)):
        return {"cases_csv": Path(cases).read_text(encoding="utf-8")}
    if hasattr(cases, "to_dict"):
        return {"cases": cases.to_dict(orient="records")}
    return {"cases": list(cases)}


def validated(spec: dict[str, Any]) -> SweepCreate:
    """Checked here, so mistakes raise the same ValidationFailed a server would answer."""
    try:
        return SweepCreate.model_validate(spec)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def load_spec_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Path]]:
    """A spec.yaml / spec.json as the CLI reads it: files, templates and a cases CSV given as
    paths relative to the spec file are uploaded with the sweep. YAML is read as YAML 1.2
    (see read_yaml), so `1e-8` is a number."""
    import json

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
    else:
        spec = read_yaml(text, path)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a sweep spec is a mapping of fields")
    base = path.parent
    uploads: dict[str, Path] = {}
    if isinstance(spec.get("files"), list):
        names = []
        for name in spec["files"]:
            if isinstance(name, str):
                uploads[Path(name).name] = base / name
                name = Path(name).name
            names.append(name)
        spec["files"] = names
    for template in spec.get("templates") or []:
        if isinstance(template, dict) and isinstance(template.get("source"), str):
            local = base / template["source"]
            if local.is_file():
                uploads[local.name] = local
                template["source"] = local.name
    if isinstance(spec.get("cases"), str):
        spec["cases_csv"] = (base / spec.pop("cases")).read_text(encoding="utf-8")
    return spec, uploads


def read_yaml(text: str, path: Path | str = "spec") -> Any:
    """YAML with the YAML 1.2 core schema's plain scalars, not PyYAML's YAML 1.1 ones: `1e-8`
    and `1.0e8` are floats (1.1 leaves them text), `010` is 10, and `yes`, `on`, `1_000`,
    `1:20` and dates stay text, as written."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml12_loader())  # a SafeLoader: no Python objects
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a tag such as `!!int abc`
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


_CORE_SCHEMA = [  # (tag, pattern, first characters): YAML 1.2.2 section 10.3.2
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("float", r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", "-+.0123456789"),
]


@functools.cache
def _yaml12_loader() -> Any:
    import re

    import yaml

    class Yaml12Loader(yaml.SafeLoader):
        pass

    replaced = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp", "value")}
    Yaml12Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for name, pattern, first in _CORE_SCHEMA:
        Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{name}", re.compile(f"^(?:{pattern})$"),
                                           list(first))
    Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
    return Yaml12Loader


def _construct_int(loader: Any, node: Any) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


class Sweep(LiveHandle[SweepRecord]):
    """A live handle on one sweep; every call reads fresh state."""

    def _fetch(self) -> SweepRecord:
        return self._backend.get_sweep(self.id)

    def progress(self) -> SweepRecord:
        """Counts per status and the finished fraction."""
        return self.refresh()

    def wait(self, timeout: float | None = None, progress: bool = False) -> SweepRecord:
        """Block until every run has ended (or the timeout runs out); `progress` shows a bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _progress_bar(self.record) if progress else None
        step = BAR_REFRESH_S if progress else LONG_POLL_S
        try:
            while True:
                left = step if deadline is None else max(0.0, min(step, deadline - time.monotonic()))
                self.record = self._backend.wait_sweep(self.id, left)
                if bar is not None:
                    _update_bar(bar, self.record)
                if self.record.status.is_terminal or (deadline is not None and time.monotonic() >= deadline):
                    return self.record
        finally:
            if bar is not None:
                bar.close()

    def as_completed(self, timeout: float | None = None) -> Iterator[Job]:
        """Yield each run as it ends (in the order they end), until all have ended."""

        deadline = None if timeout is None else time.monotonic() + timeout
        cursor, pause, ended = 0, POLL_S[0], False
        while True:
            page = self._backend.sweep_finished(self.id, cursor)
            cursor = page.cursor
            for record in page.results:
                yield Job(self._backend, record)
            if page.results:
                pause = POLL_S[0]
                continue
            if ended:
                return
            record = self.refresh()
            if record.status.is_terminal:
                ended = True  # one more read catches runs that ended meanwhile
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"sweep {self.id} is still {record.status.value}")
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_S[1])

    def runs(self, status: JobStatus | str | None = None) -> list[Job]:

        return [Job(self._backend, r) for r in self._backend.sweep_runs(self.id, status)]

    def stop(self) -> SweepRecord:
        self.record = self._backend.stop_sweep(self.id)
        return self.record

    def rerun(self, status: list[str] | str | None = None, ids: list[str] | None = None) -> SweepRecord:
        """Run ended runs again as new attempts: those with `status` (default FAILED and
        STOPPED: a stopped sweep resumes) or those `ids`."""
        statuses = [status] if isinstance(status, str) else status
        self.record = self._backend.rerun_sweep(self.id, statuses, ids)
        return self.record

    def extend(self, samples: int) -> SweepRecord:
        """Add `samples` to a sampled design (Sobol and Saltelli continue their sequence): the
        new runs start at once, and the results and analysis cover them."""
        self.record = self._backend.extend_sweep(self.id, samples)
        return self.record

    def delete(self, stop: bool = False) -> None:
        """Delete the sweep with its runs and files; `stop` first stops an active one."""
        self._backend.delete_sweep(self.id, stop)

    def results(self, page_size: int = RESULTS_PAGE_MAX) -> pandas.DataFrame:
        """One row per run (indexed by run index): status, exit code, variables, outputs.
        Read `page_size` runs at a time, each page kept as Arrow columns until the frame is
        made from them: a million-run table is never held twice (see results_frame)."""
        builder = FrameBuilder()
        for page in pages(self._page, page_size):
            builder.add(page)
        return builder.frame()

    def iter_results(self, page_size: int = RESULTS_PAGE_MAX) -> Iterator[pandas.DataFrame]:
        """results()'s rows a page at a time, in run index order, holding one page only; each
        frame has the output columns its own runs report, and its dtypes are its own."""
        for page in pages(self._page, page_size):
            builder = FrameBuilder()
            builder.add(page)
            yield builder.frame()

    def _page(self, after: int | None, limit: int) -> ResultsPage:
        return self._backend.sweep_results_page(self.id, after, limit)

    def analysis(self, output: str) -> pandas.DataFrame:
        """Sensitivity of `output` to each variable, a row per variable: pearson, spearman,
        src (standardised regression coefficient) and, for a saltelli design, the Sobol
        indices s1 and st with their confidence half-widths. `frame.attrs` holds the rest:
        runs_used, left_out, r2, regression_error and sobol_error (why indices are missing)."""
        import pandas

        from orchestrator.analysis_models import VariableSensitivity

        answer = self._backend.sweep_analysis(self.id, output)
        frame = pandas.DataFrame([v.model_dump() for v in answer.variables],
                                 columns=list(VariableSensitivity.model_fields))
        frame = frame.set_index("variable")
        frame.attrs.update(answer.model_dump(exclude={"variables"}))
        return frame

    def plot(self, x: str, y: str, color: str | None = None) -> Any:
        """A bokeh figure of column `y` against `x` of results(), coloured by `color` (shows
        inline in Jupyter; orchestrator.plots.save_html writes it as a page). See plots.scatter."""
        from orchestrator import plots

        return plots.scatter(self.results(), x, y, color)

    def plot_parallel(self, columns: list[str] | None = None, color: str | None = None) -> Any:
        """Parallel coordinates of variables and outputs (default: every numeric one), a line
        per run coloured by `color` (default: the last column). See plots.parallel."""
        from orchestrator import plots

        return plots.parallel(self.results(), columns, color)

    def __repr__(self) -> str:
        return f"<Sweep {self.id} {self.record.name} {self.record.status.value} {self.record.runs} runs>"


def _progress_bar(record: SweepRecord):
    from tqdm.auto import tqdm

    return tqdm(total=record.runs, desc=f"sweep {record.id}", unit="run")


def _update_bar(bar, record: SweepRecord) -> None:
    done = sum(n for status, n in record.counts.items() if JobStatus(status).is_terminal)
    bar.total = record.runs
    bar.update(done - bar.n)
    postfix = {status.lower(): n for status, n in sorted(record.counts.items())}
    if record.until is not None and record.until.estimate is not None:
        postfix["until"] = _interval_text(record.until)
    bar.set_postfix(postfix, refresh=True)


def _interval_text(state: Any) -> str:
    """An adaptive sweep's current estimate and interval, short enough for a progress bar."""
    if isinstance(state.estimate, list):  # Sobol indices: the widest half-width decides
        return f"S1 widest ±{state.rel_half_width:.3f} ({state.state})"
    return (f"{state.estimate:.4g} [{state.ci_low:.4g}, {state.ci_high:.4g}] "
            f"±{state.rel_half_width:.2%} ({state.state})")

