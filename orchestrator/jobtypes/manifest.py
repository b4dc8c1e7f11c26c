"""Seed manifests and job-type configurations, read as Seed and Scale write them.

The models take Seed's camelCase JSON as-is (`seedVersion`, `mediaTypes`, ...) and the
snake_case names too; `model_dump(by_alias=True)` gives Seed's JSON back. They check shapes
and types only: what is wrong across fields (collisions, duplicates, unknown placeholders)
is left to `validation`, which reports it with Scale's codes rather than as a parse error.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
JOB_TYPE_NAME = r"^[a-zA-Z0-9-]+$"
INTERFACE_NAME = r"^[a-zA-Z_][a-zA-Z0-9_-]*$"
RESOURCE_NAMES = ("cpus", "mem", "gpus", "disk", "sharedMem")
MIB = 2**20

_IDENTIFIERS = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
ENTRYPOINT_PATTERN = rf"^{_IDENTIFIERS}:{_IDENTIFIERS}$"  # 'package.module:function'


def _semver(value: str) -> str:
    if not SEMVER.fullmatch(value):
        raise ValueError(f"{value!r} is not a SemVer version (such as 1.0.0)")
    return value


def _relative_glob(value: str) -> str:
    """Output patterns are read inside the output folder; one that leaves it is refused."""
    if not value.strip():
        raise ValueError("must not be empty")
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{value!r} must be relative to the output folder, without '..'")
    return value


JobTypeName = Annotated[str, StringConstraints(pattern=JOB_TYPE_NAME, max_length=128)]
InterfaceName = Annotated[str, StringConstraints(pattern=INTERFACE_NAME, max_length=128)]
SemVer = Annotated[str, AfterValidator(_semver)]
JsonType = Literal["string", "integer", "number", "boolean", "array", "object"]


class SeedModel(BaseModel):
    """Seed's schema has additionalProperties false: a typo is reported, never ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Maintainer(SeedModel):
    name: str
    email: str | None = None
    organization: str | None = None
    phone: str | None = None
    url: str | None = None


class ResourceScalar(SeedModel):
    name: str = Field(min_length=1)
    value: float = Field(ge=0, allow_inf_nan=False, description="mem, disk, sharedMem in MiB")
    input_multiplier: float | None = Field(None, alias="inputMultiplier", ge=0, allow_inf_nan=False)


class SeedResources(SeedModel):
    scalar: list[ResourceScalar] = Field(default_factory=list)

    @field_validator("scalar")
    @classmethod
    def _one_each(cls, value: list[ResourceScalar]) -> list[ResourceScalar]:
        """Names are case-insensitive, so `cpus` and `CPUS` would both set ALLOCATED_CPUS;
        GPUs are whole devices (Scale refuses a fraction too)."""
        seen: set[str] = set()
        for scalar in value:
            if scalar.name.lower() in seen:
                raise ValueError(f"resource {scalar.name!r} is declared twice")
            if scalar.name.lower() == "gpus" and not scalar.value.is_integer():
                raise ValueError(f"gpus must be a whole number, not {scalar.value:g}")
            seen.add(scalar.name.lower())
        return value


class InputFile(SeedModel):
    name: InterfaceName
    required: bool = True
    multiple: bool = False
    media_types: list[str] = Field(default_factory=list, alias="mediaTypes")
    partial: bool = False


class InputJson(SeedModel):
    name: InterfaceName
    type: JsonType
    required: bool = True
    default: Any = None


class Inputs(SeedModel):
    files: list[InputFile] = Field(default_factory=list)
    json_: list[InputJson] = Field(default_factory=list, alias="json")


class OutputFile(SeedModel):
    name: InterfaceName
    pattern: Annotated[str, AfterValidator(_relative_glob)]
    multiple: bool = False
    required: bool = True
    media_type: str | None = Field(None, alias="mediaType")


class OutputJson(SeedModel):
    name: InterfaceName
    key: str | None = Field(None, description="the key in seed.outputs.json; defaults to name")
    type: JsonType
    required: bool = True

    @property
    def json_key(self) -> str:
        return self.key or self.name


class Outputs(SeedModel):
    files: list[OutputFile] = Field(default_factory=list)
    json_: list[OutputJson] = Field(default_factory=list, alias="json")


class Setting(SeedModel):
    name: InterfaceName
    secret: bool = False


class Mount(SeedModel):
    name: InterfaceName
    path: str = Field(min_length=1, description="where it appears in the job (absolute)")
    mode: Literal["ro", "rw"] = "ro"


class Interface(SeedModel):
    command: str | None = None
    entrypoint: str | None = Field(
        None, pattern=ENTRYPOINT_PATTERN, description="not Seed: instead of a command, 'package.module:function' "
        "of the type's Python binaries; JSON inputs are its keyword arguments, file inputs their local paths")
    inputs: Inputs = Field(default_factory=Inputs)
    outputs: Outputs = Field(default_factory=Outputs)
    mounts: list[Mount] = Field(default_factory=list)
    settings: list[Setting] = Field(default_factory=list)


class ErrorMapping(SeedModel):
    """An exit code the job type gives a name; `data` errors blame the input, `job` the code."""

    code: int = Field(ge=1, description="the exit code (0 is success)")
    name: str = Field(min_length=1)
    title: str | None = None
    description: str | None = None
    category: Literal["job", "data"] = "job"


class SeedJob(SeedModel):
    name: JobTypeName
    job_version: SemVer = Field(alias="jobVersion")
    package_version: SemVer = Field("1.0.0", alias="packageVersion")
    title: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    maintainer: Maintainer | None = None
    timeout: int | None = Field(None, gt=0, description="seconds; none: the server's limit only")
    resources: SeedResources = Field(default_factory=SeedResources)
    interface: Interface = Field(default_factory=Interface)
    errors: list[ErrorMapping] = Field(default_factory=list)
    # not Seed: what the orchestrator runs, since it runs no container images yet
    binaries: list[str] = Field(
        default_factory=list,
        description="uploaded binaries ('name' or 'name@version') or fsspec URLs, staged with every job",
    )
    docker_image: str | None = Field(None, alias="dockerImage", description="recorded only")


class Manifest(SeedModel):
    seed_version: str = Field(alias="seedVersion", min_length=1)
    job: SeedJob


# ---- configuration -------------------------------------------------------------------------


def _host_path(value: Any) -> Any:
    """Scale writes `{"type": "host", "host_path": ...}`; only the path matters here."""
    if not isinstance(value, dict):
        return value
    if value.get("type") == "volume":
        raise ValueError("volume mounts are not supported; give a host path")
    if value.get("type", "host") != "host" or set(value) - {"type", "host_path"}:
        raise ValueError("give a host path, or {\"type\": \"host\", \"host_path\": ...}")
    if "host_path" not in value:
        raise ValueError("host_path is missing")
    return value["host_path"]


HostPath = Annotated[str, BeforeValidator(_host_path)]


class Configuration(SeedModel):
    """A job type's settings and mounts: values kept apart from the manifest, as in Scale."""

    settings: dict[str, str] = Field(default_factory=dict)
    mounts: dict[str, HostPath] = Field(default_factory=dict, description="mount name -> absolute host path")
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)


# ---- helpers -------------------------------------------------------------------------------


def env_name(name: str) -> str:
    """The variable a Seed name becomes: upper-cased, dashes as underscores."""
    return name.upper().replace("-", "_")


def _scalars(manifest: Manifest) -> dict[str, float]:
    """Declared scalar values by lower-cased name (Seed's names are case-insensitive)."""
    return {scalar.name.lower(): scalar.value for scalar in manifest.job.resources.scalar}


def allocated(manifest: Manifest) -> dict[str, float]:
    """`ALLOCATED_<NAME>` for every declared scalar, as Seed sets them for the job."""
    return {
        "ALLOCATED_" + env_name(scalar.name): scalar.value
        for scalar in manifest.job.resources.scalar
    }


def dask_resources(manifest: Manifest) -> dict[str, Any]:
    """The declared cpus, mem (MiB) and gpus as the orchestrator's `Resources` fields."""
    scalars = _scalars(manifest)
    wanted: dict[str, Any] = {}
    if "cpus" in scalars:
        wanted["cores"] = float(scalars["cpus"])
    if "mem" in scalars:
        wanted["memory"] = int(round(scalars["mem"] * MIB))
    if "gpus" in scalars:
        wanted["gpus"] = int(scalars["gpus"])
    return wanted
