"""Job types as Seed manifests (orchestrator.jobtypes): parsing, Scale's validation codes, and
the checks of a job's inputs, outputs and exit code against its type. Pure: no server.

Each bad variant starts from Scale's example job type (which must validate clean) and
changes one thing, so every code is shown to come from that change and to name its field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.errors import ValidationFailed
from orchestrator.jobtypes.manifest import (
    RESOURCE_NAMES,
    Configuration,
    Manifest,
    allocated,
    dask_resources,
    env_name,
)
from orchestrator.jobtypes.validation import (
    Issue,
    Report,
    check_inputs,
    check_json_outputs,
    error_for_exit,
    glob_match,
    match_file_outputs,
    validate,
)

MIB = 2**20


def scale_manifest() -> dict[str, Any]:
    """Scale's example job type, as its documentation writes it."""
    return {
        "seedVersion": "1.0.0",
        "job": {
            "name": "test",
            "jobVersion": "1.0.0",
            "packageVersion": "1.0.0",
            "title": "Test job",
            "description": "Reads text and counts it",
            "tags": ["sample", "text"],
            "maintainer": {"name": "John Doe", "organization": "E-corp",
                           "email": "jdoe@example.com", "url": "http://www.example.com",
                           "phone": "666-555-4321"},
            "timeout": 3600,
            "resources": {"scalar": [
                {"name": "cpus", "value": 1.0},
                {"name": "mem", "value": 1024.0},
                {"name": "sharedMem", "value": 1024.0},
                {"name": "disk", "value": 1000.0, "inputMultiplier": 4.0},
            ]},
            "interface": {
                "command": "./run.sh ${INPUT_TEXT} ${READ_LENGTH} ${OUTPUT_DIR}",
                "inputs": {
                    "files": [{"name": "INPUT_TEXT", "mediaTypes": ["text/plain"],
                               "required": True, "partial": False}],
                    "json": [{"name": "READ_LENGTH", "type": "integer", "required": True}],
                },
                "outputs": {
                    "files": [{"name": "OUTPUT_TEXT", "mediaType": "text/plain",
                               "pattern": "output_text.txt"}],
                    "json": [{"name": "total_input", "key": "TOTAL_INPUT", "type": "integer"}],
                },
                "mounts": [{"name": "MOUNT_PATH", "path": "/the/container/path", "mode": "ro"}],
                "settings": [{"name": "DB_HOST", "secret": False},
                             {"name": "DB_PASS", "secret": True}],
            },
            "errors": [
                {"code": 1, "name": "data-issue", "title": "Data Issue discovered",
                 "description": "There was a problem with input data", "category": "data"},
                {"code": 2, "name": "missing-mount", "title": "Missing mount",
                 "description": "Expected mount point not available at run time",
                 "category": "job"},
            ],
        },
    }


def scale_configuration() -> dict[str, Any]:
    return {
        "settings": {"DB_HOST": "db.example.com", "DB_PASS": "s3cret"},
        "mounts": {"MOUNT_PATH": {"type": "host", "host_path": "/host/path"}},
        "priority": 100,
    }


def body(change: Callable[[dict, dict], Any] | None = None) -> dict[str, Any]:
    """The example's validation body, with `change(job, configuration)` applied."""
    manifest, configuration = scale_manifest(), scale_configuration()
    if change:
        change(manifest["job"], configuration)
    return {"manifest": manifest, "configuration": configuration}


def parsed(change: Callable[[dict], Any] | None = None) -> Manifest:
    manifest = scale_manifest()
    if change:
        change(manifest["job"])
    return Manifest.model_validate(manifest)


def codes(issues: list[Issue]) -> list[str]:
    return [issue.name for issue in issues]


# ---- the models ---------------------------------------------------------------------------


def test_scale_example_validates_clean():
    report, manifest, configuration = validate({**body(), "docker_image": "ignored:1"})
    assert report == Report(True, [], [])
    assert report.as_dict() == {"is_valid": True, "errors": [], "warnings": []}
    assert manifest is not None and configuration is not None
    assert manifest.job.interface.inputs.json_[0].type == "integer"
    assert manifest.job.interface.outputs.json_[0].json_key == "TOTAL_INPUT"
    assert configuration.mounts == {"MOUNT_PATH": "/host/path"}  # Scale's form normalised
    assert configuration.priority == 100


def test_models_read_and_write_seed_json():
    manifest = parsed()
    dumped = manifest.model_dump(by_alias=True, exclude_none=True)
    job = dumped["job"]
    assert dumped["seedVersion"] == "1.0.0"
    assert (job["jobVersion"], job["packageVersion"]) == ("1.0.0", "1.0.0")
    assert job["interface"]["inputs"]["files"][0]["mediaTypes"] == ["text/plain"]
    assert job["interface"]["inputs"]["json"][0]["name"] == "READ_LENGTH"
    assert job["interface"]["outputs"]["files"][0]["mediaType"] == "text/plain"
    assert job["resources"]["scalar"][3]["inputMultiplier"] == 4.0
    assert Manifest.model_validate(dumped) == manifest


def test_snake_case_names_and_defaults():
    manifest = Manifest.model_validate({
        "seed_version": "1.0.0",
        "job": {"name": "t", "job_version": "2.1.0-rc.1+build.5", "title": "T",
                "docker_image": "img:1", "binaries": ["tool@2"],
                "interface": {"command": "x", "inputs": {"json": [{"name": "N", "type": "number"}]},
                              "outputs": {}}},
    })
    job = manifest.job
    assert (job.package_version, job.description, job.timeout, job.maintainer) == ("1.0.0", "", None, None)
    assert job.docker_image == "img:1" and job.binaries == ["tool@2"]
    item = job.interface.inputs.json_[0]
    assert (item.required, item.default) == (True, None)
    assert Manifest.model_validate(
        {"seedVersion": "1", "job": {**scale_manifest()["job"], "dockerImage": "img:2"}}
    ).job.docker_image == "img:2"


def test_file_and_mount_defaults():
    interface = parsed().job.interface
    assert (interface.inputs.files[0].multiple, interface.inputs.files[0].partial) == (False, False)
    assert (interface.outputs.files[0].required, interface.outputs.files[0].multiple) == (True, False)
    assert Manifest.model_validate(body(lambda job, _: job["interface"]["mounts"][0].pop("mode"))[
        "manifest"]).job.interface.mounts[0].mode == "ro"


def test_env_name_allocated_and_dask_resources():
    assert env_name("input-text") == "INPUT_TEXT"
    assert env_name("sharedMem") == "SHAREDMEM"
    assert RESOURCE_NAMES == ("cpus", "mem", "gpus", "disk", "sharedMem")
    manifest = parsed()
    assert allocated(manifest) == {"ALLOCATED_CPUS": 1.0, "ALLOCATED_MEM": 1024.0,
                                   "ALLOCATED_SHAREDMEM": 1024.0, "ALLOCATED_DISK": 1000.0}
    assert dask_resources(manifest) == {"cores": 1.0, "memory": 1024 * MIB}
    shouting = parsed(lambda job: job["resources"].update(scalar=[
        {"name": "CPUS", "value": 2.5}, {"name": "Mem", "value": 0.5}, {"name": "GPUs", "value": 2}]))
    assert dask_resources(shouting) == {"cores": 2.5, "memory": MIB // 2, "gpus": 2}
    assert isinstance(dask_resources(shouting)["gpus"], int)
    assert allocated(shouting) == {"ALLOCATED_CPUS": 2.5, "ALLOCATED_MEM": 0.5, "ALLOCATED_GPUS": 2.0}


def test_configuration_forms():
    assert Configuration.model_validate({"mounts": {"M": "/a"}}).mounts == {"M": "/a"}
    assert Configuration().model_dump() == {"settings": {}, "mounts": {}, "priority": None}


def test_empty_outputs_are_valid():
    """Scale #1604: `outputs: {}` is what the spec allows."""
    report, manifest, _ = validate(body(lambda job, _: job["interface"].update(outputs={})))
    assert report.is_valid, report.errors
    assert manifest is not None and manifest.job.interface.outputs.files == []


# ---- JSON_VALIDATION_ERROR ----------------------------------------------------------------

def _set(path: str, value: Any) -> Callable[[dict, dict], None]:
    """Set a field of the job (dotted, list indices as numbers) to `value`."""
    def change(job: dict, _: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = job
        for part in parents:
            target = target[part]
        target[last] = value
    return change


@pytest.mark.parametrize("change, where", [
    (_set("name", "bad name!"), "job.name:"),
    (_set("jobVersion", "1.0"), "job.jobVersion:"),
    (_set("packageVersion", "v1.0.0"), "job.packageVersion:"),
    (_set("timeout", 0), "job.timeout:"),
    (_set("jobVersoin", "1.0.0"), "job.jobVersoin: Extra inputs"),
    (_set("interface.inputs.files.0.name", "1bad"), "job.interface.inputs.files[0].name:"),
    (_set("interface.inputs.json.0.type", "float"), "job.interface.inputs.json[0].type:"),
    (_set("interface.outputs.files.0.pattern", "/abs/out.txt"), "job.interface.outputs.files[0].pattern:"),
    (_set("interface.outputs.files.0.pattern", "sub/../../x"), "job.interface.outputs.files[0].pattern:"),
    (_set("interface.mounts.0.mode", "rx"), "job.interface.mounts[0].mode:"),
    (_set("interface.settings.1.secret", "maybe"), "job.interface.settings[1].secret:"),
    (_set("errors.0.category", "system"), "job.errors[0].category:"),
    (_set("errors.0.code", 0), "job.errors[0].code:"),
    (_set("resources.scalar.0.value", -1), "job.resources.scalar[0].value:"),
    (_set("resources.scalar.0", {"name": "gpus", "value": 0.5}), "job.resources.scalar: Value error"),
    (_set("resources.scalar.1.name", "CPUS"), "job.resources.scalar:"),
    (_set("interface.inputs.json.0.default", "ten"), "job.interface.inputs.json[0].default:"),
    (lambda job, _: job.pop("title"), "job.title: Field required"),
    (lambda _, conf: conf["mounts"].update(MOUNT_PATH={"type": "volume", "driver": "x"}),
     "configuration.mounts.MOUNT_PATH:"),
    (lambda _, conf: conf.update(output_workspaces={}), "configuration.output_workspaces:"),
])
def test_json_validation_errors_name_the_field(change, where):
    report, _, _ = validate(body(change))
    assert not report.is_valid
    assert codes(report.errors) == ["JSON_VALIDATION_ERROR"], report.errors
    assert report.errors[0].description.startswith(where.replace(": Value error", ":")), report.errors
    if "Value error" in where:
        assert "Value error" not in report.errors[0].description


def test_gpus_must_be_whole():
    report, manifest, _ = validate(body(_set("resources.scalar.0", {"name": "gpus", "value": 0.5})))
    assert manifest is None
    assert "gpus must be a whole number" in report.errors[0].description


def test_every_pydantic_problem_is_reported():
    def two(job: dict, _: dict) -> None:
        job["name"] = "no spaces"
        job["interface"]["mounts"][0]["mode"] = "x"
    report, manifest, configuration = validate(body(two))
    assert manifest is None and configuration is not None
    assert codes(report.errors) == ["JSON_VALIDATION_ERROR"] * 2


@pytest.mark.parametrize("bad_body, where", [
    ({}, "manifest: is required"),
    ({"manifest": []}, "manifest:"),
    ([], "body:"),
    ({"manifest": scale_manifest(), "configuration": []}, "configuration:"),
])
def test_missing_or_malformed_manifest(bad_body, where):
    report, _, _ = validate(bad_body)
    assert not report.is_valid
    assert codes(report.errors) == ["JSON_VALIDATION_ERROR"]
    assert report.errors[0].description.startswith(where)


def test_configuration_is_optional_but_then_settings_and_mounts_are_missing():
    report, _, configuration = validate({"manifest": scale_manifest()})
    assert report.is_valid and configuration == Configuration()
    assert sorted(codes(report.warnings)) == ["MISSING_MOUNT", "MISSING_SETTING", "MISSING_SETTING"]


# ---- Scale's codes from one bad change each -----------------------------------------------

def _add(path: str, item: Any) -> Callable[[dict, dict], None]:
    def change(job: dict, _: dict) -> None:
        target = job
        for part in path.split("."):
            target = target.setdefault(part, [] if part == path.split(".")[-1] else {})
        target.append(item)
    return change


def _command(text: str) -> Callable[[dict, dict], None]:
    return _set("interface.command", text)


@pytest.mark.parametrize("change, code, where", [
    (_add("interface.settings", {"name": "input-text"}), "NAME_COLLISION_ERROR",
     "job.interface.settings[2].name: 'input-text' collides with job.interface.inputs.files[0].name"),
    (_add("interface.outputs.json", {"name": "read_length", "type": "integer"}), "NAME_COLLISION_ERROR",
     "job.interface.outputs.json[1].name:"),
    (_add("interface.mounts", {"name": "db_host", "path": "/db"}), "NAME_COLLISION_ERROR",
     "job.interface.mounts[1].name:"),
    (_add("interface.outputs.files", {"name": "output_dir", "pattern": "x"}), "NAME_COLLISION_ERROR",
     "job.interface.outputs.files[1].name: 'output_dir' is reserved"),
    (_add("interface.inputs.json", {"name": "ALLOCATED_CPUS", "type": "number"}),
     "NAME_COLLISION_ERROR", "job.interface.inputs.json[1].name: 'ALLOCATED_CPUS' is reserved"),
    (_add("interface.settings", {"name": "JOB_ID"}), "NAME_COLLISION_ERROR",
     "job.interface.settings[2].name: 'JOB_ID' is reserved"),
    (_add("interface.mounts", {"name": "MOUNT_PATH", "path": "/other"}), "DUPLICATE_MOUNT_NAMES",
     "job.interface.mounts[1].name: 'MOUNT_PATH' collides with job.interface.mounts[0].name"),
    (_add("interface.mounts", {"name": "mount-path", "path": "/other"}), "DUPLICATE_MOUNT_NAMES",
     "job.interface.mounts[1].name:"),
    (_add("errors", {"code": 3, "name": "data-issue"}), "DUPLICATE_ERROR_NAMES",
     "job.errors[2].name: 'data-issue' is also the name of job.errors[0]"),
    (_add("errors", {"code": 2, "name": "other"}), "DUPLICATE_ERROR_CODES",
     "job.errors[2].code: 2 is also the code of job.errors[1]"),
    (_set("interface.mounts.0.path", "the/container/path"), "INVALID_MOUNT_PATH",
     "job.interface.mounts[0].path: 'the/container/path' is not absolute"),
    (lambda _, conf: conf["mounts"].update(MOUNT_PATH="relative/host"), "INVALID_MOUNT_PATH",
     "configuration.mounts.MOUNT_PATH: host path 'relative/host' is not absolute"),
    (lambda _, conf: conf["mounts"].update(MOUNT_PATH={"type": "host", "host_path": "rel"}),
     "INVALID_MOUNT_PATH", "configuration.mounts.MOUNT_PATH:"),
    (_command("./run.sh ${INPUT_TEXT} ${NOPE}"), "UNKNOWN_PLACEHOLDER", "job.interface.command: ${NOPE}"),
    (_command("./run.sh $INPUT_TEXT $NOPE"), "UNKNOWN_PLACEHOLDER", "job.interface.command: $NOPE"),
    (_command("./run.sh ${OUTPUT_TEXT}"), "UNKNOWN_PLACEHOLDER", "job.interface.command: ${OUTPUT_TEXT}"),
    (_command("./run.sh ${1st}"), "UNKNOWN_PLACEHOLDER", "job.interface.command: ${1st}"),
    (_command("./run.sh ${INPUT_TEXT x}"), "UNKNOWN_PLACEHOLDER", "job.interface.command: ${INPUT_TEXT x}"),
    (_set("binaries", ["counter@3", "s3://bucket/tool", "missing"]), "UNKNOWN_BINARY",
     "job.binaries[2]: no uploaded binary 'missing'"),
    (lambda job, _: job["interface"].pop("command"), "NO_COMMAND", "job.interface.command:"),
    (_command("   "), "NO_COMMAND", "job.interface.command:"),
])
def test_each_error_code(change, code, where):
    uploaded = {"counter@3"}
    asked: list[str] = []

    def exists(ref: str) -> bool:
        asked.append(ref)
        return ref in uploaded

    report, manifest, _ = validate(body(change), binary_exists=exists)
    assert not report.is_valid
    assert codes(report.errors) == [code], report.errors
    assert report.errors[0].description.startswith(where), report.errors[0].description
    assert manifest is not None  # parsed: the problem is semantic
    assert "s3://bucket/tool" not in asked  # URLs are fetched when a job runs, not looked up
    assert report.as_dict()["errors"] == [{"name": code, "description": report.errors[0].description}]


def test_no_command_says_what_to_give_instead():
    report, _, _ = validate(body(lambda job, _: job["interface"].pop("command")))
    text = report.errors[0].description
    assert "container images is not supported" in text and "binaries or URLs" in text


@pytest.mark.parametrize("command", [
    "./run.sh ${INPUT_TEXT} ${READ_LENGTH} ${OUTPUT_DIR}",
    "./run.sh $INPUT_TEXT $READ_LENGTH -o $OUTPUT_DIR",
    "./run.sh ${INPUT_TEXT/#/-i } ${READ_LENGTH:-10} ${DB_HOST} ${DB_PASS} ${MOUNT_PATH}",
    "./run.sh ${JOB_ID} ${ALLOCATED_MEM} $ALLOCATED_CPUS ${ALLOCATED_GPUS}",
    "./run.sh ${input_text} $${NOT_A_VARIABLE} $$ \\$ESCAPED",
])
def test_known_placeholders_pass(command):
    report, _, _ = validate(body(_command(command)))
    assert report.errors == []


def test_several_errors_come_together():
    def many(job: dict, conf: dict) -> None:
        job["interface"]["command"] = "./run.sh ${A} ${B}"
        job["interface"]["mounts"][0]["path"] = "rel"
        job["errors"].append({"code": 1, "name": "data-issue"})
    report, _, _ = validate(body(many))
    assert codes(report.errors) == ["UNKNOWN_PLACEHOLDER", "UNKNOWN_PLACEHOLDER",
                                    "DUPLICATE_ERROR_NAMES", "DUPLICATE_ERROR_CODES",
                                    "INVALID_MOUNT_PATH"]


# ---- warnings -----------------------------------------------------------------------------

@pytest.mark.parametrize("change, code, where", [
    (lambda _, conf: conf["settings"].pop("DB_PASS"), "MISSING_SETTING",
     "configuration.settings.DB_PASS: secret setting DB_PASS has no value"),
    (lambda _, conf: conf["settings"].pop("DB_HOST"), "MISSING_SETTING",
     "configuration.settings.DB_HOST: setting DB_HOST has no value"),
    (lambda _, conf: conf["settings"].update(OTHER="x"), "UNKNOWN_SETTING",
     "configuration.settings.OTHER: the manifest declares no setting OTHER"),
    (lambda _, conf: conf["mounts"].clear(), "MISSING_MOUNT",
     "configuration.mounts.MOUNT_PATH: mount MOUNT_PATH has no value"),
    (lambda _, conf: conf["mounts"].update(SCRATCH="/scratch"), "UNKNOWN_MOUNT",
     "configuration.mounts.SCRATCH:"),
    (_add("resources.scalar", {"name": "tpus", "value": 1}), "NONSTANDARD_RESOURCE",
     "job.resources.scalar[4].name: 'tpus' is not one of cpus, mem, gpus, disk, sharedMem"),
])
def test_each_warning(change, code, where):
    report, _, _ = validate(body(change))
    assert report.is_valid and report.errors == []
    assert codes(report.warnings) == [code], report.warnings
    assert report.warnings[0].description.startswith(where)


def test_names_in_configuration_compare_as_variables():
    def lower(_: dict, conf: dict) -> None:
        conf["settings"] = {"db-host": "h", "db_pass": "p"}
    report, _, _ = validate(body(lower))
    assert report.warnings == []


def test_resource_names_are_case_insensitive():
    scalars = [{"name": n, "value": 1} for n in ("CPUS", "Mem", "GPUS", "DISK", "SHAREDMEM")]
    report, _, _ = validate(body(_set("resources.scalar", scalars)))
    assert report.warnings == []


@pytest.mark.parametrize("workers, warned", [
    (None, False),
    ([], False),
    ([{"CPU": 4, "MEMORY": 2 * 1024 * MIB}], False),
    ([{"CPU": 4, "MEMORY": 512 * MIB}, {"CPU": 0.5, "MEMORY": 8 * 1024 * MIB}], True),
    ([{"CPU": 4}], True),  # memory not declared on the worker
])
def test_unsatisfiable_resources(workers, warned):
    report, _, _ = validate(body(), worker_resources=workers)
    assert report.is_valid
    assert codes(report.warnings) == (["UNSATISFIABLE_RESOURCES"] if warned else [])


def test_unsatisfiable_gpus():
    gpus = _add("resources.scalar", {"name": "gpus", "value": 2})
    fits = [{"CPU": 8, "MEMORY": 2**40, "GPU": 2}]
    assert validate(body(gpus), worker_resources=fits)[0].warnings == []
    short = [{"CPU": 8, "MEMORY": 2**40, "GPU": 1}, {"CPU": 8, "MEMORY": 2**40}]
    assert codes(validate(body(gpus), worker_resources=short)[0].warnings) == ["UNSATISFIABLE_RESOURCES"]


# ---- check_inputs -------------------------------------------------------------------------

def _inputs_manifest() -> Manifest:
    def extra(job: dict) -> None:
        job["interface"]["inputs"]["files"].append({"name": "extra-files", "multiple": True,
                                                    "required": False})
        job["interface"]["inputs"]["json"] += [
            {"name": "RATIO", "type": "number", "required": False, "default": 0.5},
            {"name": "VERBOSE", "type": "boolean", "required": False},
            {"name": "OPTIONS", "type": "object", "required": False},
            {"name": "TAGS", "type": "array", "required": False},
            {"name": "LABEL", "type": "string", "required": False},
        ]
    return parsed(extra)


def test_check_inputs_normalises_and_fills_defaults():
    manifest = _inputs_manifest()
    checked = check_inputs(manifest, {
        "files": {"input_text": ["upload:abc"], "EXTRA_FILES": ["a", "b", "c"]},
        "json": {"read-length": 10, "VERBOSE": False, "OPTIONS": {"a": 1}, "TAGS": [1],
                 "LABEL": "x"},
    })
    assert checked == {
        "files": {"INPUT_TEXT": ["upload:abc"], "extra-files": ["a", "b", "c"]},
        "json": {"READ_LENGTH": 10, "RATIO": 0.5, "VERBOSE": False, "OPTIONS": {"a": 1},
                 "TAGS": [1], "LABEL": "x"},
    }


def test_check_inputs_integers_are_numbers_and_optional_absent_stay_absent():
    manifest = _inputs_manifest()
    checked = check_inputs(manifest, {"files": {"INPUT_TEXT": ["f"], "extra-files": []},
                                      "json": {"READ_LENGTH": 1, "RATIO": 3, "LABEL": None}})
    assert checked == {"files": {"INPUT_TEXT": ["f"]}, "json": {"READ_LENGTH": 1, "RATIO": 3}}


def refusal(inputs: Any, manifest: Manifest | None = None) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        check_inputs(manifest or _inputs_manifest(), inputs)
    assert caught.value.message.startswith("invalid inputs")
    return caught.value.fields


GOOD_FILES = {"INPUT_TEXT": ["f"]}
GOOD_JSON = {"READ_LENGTH": 10}


@pytest.mark.parametrize("inputs, fields", [
    ({"json": GOOD_JSON}, {"inputs.files.INPUT_TEXT": "required input INPUT_TEXT is missing"}),
    ({"files": GOOD_FILES}, {"inputs.json.READ_LENGTH": "required input READ_LENGTH is missing"}),
    ({"files": GOOD_FILES, "json": {"READ_LENGTH": None}},
     {"inputs.json.READ_LENGTH": "required input READ_LENGTH is missing"}),
    ({}, {"inputs.files.INPUT_TEXT": "required input INPUT_TEXT is missing",
          "inputs.json.READ_LENGTH": "required input READ_LENGTH is missing"}),
    ({"files": GOOD_FILES, "json": {"READ_LENGTH": True}},
     {"inputs.json.READ_LENGTH": "input READ_LENGTH must be an integer, not boolean"}),
    ({"files": GOOD_FILES, "json": {"READ_LENGTH": 2.5}},
     {"inputs.json.READ_LENGTH": "input READ_LENGTH must be an integer, not number"}),
    ({"files": GOOD_FILES, "json": {"READ_LENGTH": "10"}},
     {"inputs.json.READ_LENGTH": "input READ_LENGTH must be an integer, not string"}),
    ({"files": GOOD_FILES, "json": {**GOOD_JSON, "RATIO": False}},
     {"inputs.json.RATIO": "input RATIO must be a number, not boolean"}),
    ({"files": GOOD_FILES, "json": {**GOOD_JSON, "VERBOSE": 1}},
     {"inputs.json.VERBOSE": "input VERBOSE must be a boolean, not integer"}),
    ({"files": GOOD_FILES, "json": {**GOOD_JSON, "OPTIONS": [1]}},
     {"inputs.json.OPTIONS": "input OPTIONS must be an object, not array"}),
    ({"files": GOOD_FILES, "json": {**GOOD_JSON, "TAGS": {}}},
     {"inputs.json.TAGS": "input TAGS must be an array, not object"}),
    ({"files": GOOD_FILES, "json": {**GOOD_JSON, "LABEL": 3}},
     {"inputs.json.LABEL": "input LABEL must be a string, not integer"}),
    ({"files": {"INPUT_TEXT": []}, "json": GOOD_JSON},
     {"inputs.files.INPUT_TEXT": "input INPUT_TEXT takes one file; none given"}),
    ({"files": {"INPUT_TEXT": ["a", "b"]}, "json": GOOD_JSON},
     {"inputs.files.INPUT_TEXT": "input INPUT_TEXT takes one file; 2 given"}),
    ({"files": {"input_text": ["a", "b"]}, "json": GOOD_JSON},
     {"inputs.files.input_text": "input INPUT_TEXT takes one file; 2 given"}),
    ({"files": {"INPUT_TEXT": "f"}, "json": GOOD_JSON},
     {"inputs.files.INPUT_TEXT": "must be a list of file sources"}),
    ({"files": {"INPUT_TEXT": [""]}, "json": GOOD_JSON},
     {"inputs.files.INPUT_TEXT": "must be a list of file sources"}),
    ({"files": {**GOOD_FILES, "OTHER": ["x"]}, "json": GOOD_JSON},
     {"inputs.files.OTHER": "unknown input OTHER"}),
    ({"files": GOOD_FILES, "json": {**GOOD_JSON, "other": 1}},
     {"inputs.json.other": "unknown input other"}),
    ({"files": {**GOOD_FILES, "READ_LENGTH": ["x"]}, "json": GOOD_JSON},
     {"inputs.files.READ_LENGTH": "READ_LENGTH is a json input: give it under inputs.json"}),
    ({"files": GOOD_FILES, "json": {**GOOD_JSON, "input-text": "f"}},
     {"inputs.json.input-text": "input-text is a files input: give it under inputs.files"}),
    ({"files": {**GOOD_FILES, "input_text": ["g"]}, "json": GOOD_JSON},
     {"inputs.files.input_text": "input INPUT_TEXT is given twice (also as INPUT_TEXT)"}),
    ({"files": GOOD_FILES, "json": GOOD_JSON, "outputs": {}},
     {"inputs.outputs": "unknown section: give files and json"}),
    ({"files": [], "json": GOOD_JSON},
     {"inputs.files": "must be an object of input names",
      "inputs.files.INPUT_TEXT": "required input INPUT_TEXT is missing"}),
])
def test_check_inputs_refusals(inputs, fields):
    assert refusal(inputs) == fields


def test_check_inputs_required_multiple_needs_files():
    manifest = parsed(lambda job: job["interface"]["inputs"]["files"][0].update(multiple=True))
    assert check_inputs(manifest, {"files": {"INPUT_TEXT": ["a", "b"]}, "json": GOOD_JSON})[
        "files"] == {"INPUT_TEXT": ["a", "b"]}
    assert refusal({"files": {"INPUT_TEXT": []}, "json": GOOD_JSON}, manifest) == {
        "inputs.files.INPUT_TEXT": "input INPUT_TEXT takes files; none given"}


def test_check_inputs_not_an_object():
    with pytest.raises(ValidationFailed) as caught:
        check_inputs(_inputs_manifest(), ["x"])  # type: ignore[arg-type]
    assert caught.value.fields == {"inputs": "must be an object"}


# ---- outputs and exit codes ---------------------------------------------------------------

def test_json_outputs_by_key():
    manifest = parsed()
    assert check_json_outputs(manifest, {"TOTAL_INPUT": 42, "other": "x"}) == ({"total_input": 42}, None)
    assert check_json_outputs(manifest, {"total_input": 42}) == (
        {}, "missing required output total_input")
    assert check_json_outputs(manifest, {"TOTAL_INPUT": True}) == (
        {}, "output total_input is not an integer")
    assert check_json_outputs(manifest, {"TOTAL_INPUT": "42"}) == (
        {}, "output total_input is not an integer")
    assert check_json_outputs(manifest, []) == ({}, "seed.outputs.json is not a JSON object")


def test_json_outputs_optional_and_default_key():
    manifest = parsed(lambda job: job["interface"]["outputs"].update(json=[
        {"name": "score", "type": "number", "required": False},
        {"name": "ok", "type": "boolean"},
    ]))
    assert check_json_outputs(manifest, {"ok": False}) == ({"ok": False}, None)
    assert check_json_outputs(manifest, {"ok": True, "score": 1}) == ({"ok": True, "score": 1}, None)
    assert check_json_outputs(manifest, {"score": "high"}) == (
        {}, "output score is not a number; missing required output ok")


def _file_outputs_manifest() -> Manifest:
    return parsed(lambda job: job["interface"]["outputs"].update(files=[
        {"name": "OUTPUT_TEXT", "pattern": "output_text.txt"},
        {"name": "tiles", "pattern": "sub-*/tile_?.tif", "multiple": True},
        {"name": "log", "pattern": "*.log", "required": False},
    ]))


def test_file_outputs_match():
    matches, reason = match_file_outputs(_file_outputs_manifest(), [
        "./output_text.txt", "output_text.txt.metadata.json", "sub-a/tile_1.tif", "sub-b/tile_2.tif",
        "sub-b/tile_10.tif", "sub-a/deep/tile_3.tif", "logs/run.log",
    ])
    assert reason is None
    assert matches == {"OUTPUT_TEXT": ["output_text.txt"],
                       "tiles": ["sub-a/tile_1.tif", "sub-b/tile_2.tif"], "log": []}


def test_file_outputs_problems():
    manifest = _file_outputs_manifest()
    matches, reason = match_file_outputs(manifest, ["a.log", "b.log", "sub-x/tile_1.tif"])
    assert matches["log"] == ["a.log", "b.log"]
    assert reason == ("missing required output OUTPUT_TEXT; "
                      "several files match single output log: a.log, b.log")
    assert match_file_outputs(manifest, ["output_text.txt"])[1] == "missing required output tiles"


def test_sidecar_without_its_file_is_a_file():
    manifest = parsed(lambda job: job["interface"]["outputs"].update(files=[
        {"name": "meta", "pattern": "*.json"}]))
    assert match_file_outputs(manifest, ["x.metadata.json"]) == ({"meta": ["x.metadata.json"]}, None)


@pytest.mark.parametrize("path, pattern, matched", [
    ("a.txt", "*.txt", True),
    ("d/a.txt", "*.txt", False),
    ("d/a.txt", "*/a.txt", True),
    ("d/e/a.txt", "*/a.txt", False),
    ("d/e/a.txt", "**/a.txt", False),
    ("a.txt", "?.txt", True),
    ("ab.txt", "?.txt", False),
    ("a/b", "a?b", False),
    ("A.TXT", "*.txt", False),
    ("run7.out", "run[0-9].out", True),
    ("x", "./x", True),
    ("out/a.txt", "out", False),
    ("out", "out/*", False),
])
def test_glob_match(path, pattern, matched):
    assert glob_match(path, pattern) is matched


def test_error_for_exit():
    manifest = parsed()
    assert error_for_exit(manifest, 1) == ("data-issue", "error 1 (data): Data Issue discovered")
    assert error_for_exit(manifest, 2) == ("missing-mount", "error 2 (job): Missing mount")
    assert error_for_exit(manifest, 7) == (None, "exit code 7 (not an error the job type declares)")
    untitled = parsed(lambda job: job["errors"][0].pop("title"))
    assert error_for_exit(untitled, 1) == ("data-issue", "error 1 (data): data-issue")
    assert error_for_exit(manifest, 0)[0] is None
