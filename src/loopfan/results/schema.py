"""The report's JSON Schema (package data) and reading a report file back.

Rules of this file: the schema file is the contract (docs/report.md explains it); this module
loads it, validates against it with jsonschema (the test extra: `validation_errors`, for tests), and
turns an unreadable, foreign or damaged file into a UsageError that says what was expected.

A report read back is checked against the schema by `report_problems`, a small validator of the
keywords the schema uses (jsonschema is not a dependency of loopfan itself), and its histograms are
decoded once: a report with the right schema name but a damaged value ("established": "many", a
histogram that is not base64) is bad input named at the loading edge, not a TypeError or a
binascii error deep in compare or the page. The keys a report lacks are judged in every object
below the top - a list's items (a failure without its cause, a check without its verdict) and a
block (a traffic block without its window_s, an identity without its host): each "required" list
names keys its block has carried since the block first appeared (no required list of the schema
has ever grown), and readers index them (a missing one was "internal error: KeyError"). At the top
level "required" is skipped: a key an earlier loopfan version did not write is taken as not
measured by every reader. The time series' columns must be as long as their time axis (a chart of
columns of two lengths fails deep in matplotlib).
"""

from __future__ import annotations

import functools
import importlib
import json
from importlib import resources
from typing import Any

from loopfan.errors import UsageError

REPORT_SCHEMA = "loopfan.report/1"
SCHEMA_FILE = "report.schema.json"


@functools.cache
def schema() -> dict[str, Any]:
    text = resources.files("loopfan.results").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def validation_errors(rep: dict[str, Any]) -> list[str]:
    """Every way `rep` breaks the schema ('path: message'); needs jsonschema (the test extra)."""
    jsonschema: Any = importlib.import_module("jsonschema")  # untyped; the test extra installs it
    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(rep), key=lambda e: list(e.absolute_path))]


# The keywords report_problems judges, and those it reads past (annotations; "required" is judged
# below the top level only: above).
_JUDGED = frozenset({"type", "$ref", "const", "enum", "minimum", "exclusiveMinimum", "oneOf", "properties",
                     "additionalProperties", "items", "required"})
_SKIPPED = frozenset({"$schema", "$id", "title", "description", "contentEncoding", "$defs"})
KNOWN_KEYWORDS = _JUDGED | _SKIPPED

_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None), "number": (int, float),
}

_READ_AS = {"integer": "an integer", "number": "a number", "object": "an object", "array": "a list",
            "string": "a string", "boolean": "true or false"}


def _has_type(value: Any, name: str) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never a number to JSON
        return name == "boolean"
    if name == "integer":  # JSON does not tell 3 from 3.0: neither does JSON Schema
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, _PYTHON_TYPES[name])


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _problems(value: Any, node: dict[str, Any], at: str, out: list[str]) -> None:
    """Append to `out` what in `value` breaks the schema `node` ('path: message'); `at` is its path,
    "" at the top level (whose required keys are not judged: the module docstring)."""
    where = at or "(top)"
    if "$ref" in node:
        _problems(value, _resolve(node["$ref"]), at, out)
    types = node.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_has_type(value, name) for name in names):
            out.append(f"{where}: {_shown(value)} is not {' or '.join(_READ_AS.get(n, n) for n in names)}")
            return  # the rest of the node speaks of a value of that type
    if "const" in node and value != node["const"]:
        out.append(f"{where}: {_shown(value)} is not {_shown(node['const'])}")
    if "enum" in node and value not in node["enum"]:
        out.append(f"{where}: {_shown(value)} is not one of {', '.join(map(_shown, node['enum']))}")
    if _has_type(value, "number"):
        if "minimum" in node and value < node["minimum"]:
            out.append(f"{where}: {_shown(value)} is below the minimum {node['minimum']}")
        if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
            out.append(f"{where}: {_shown(value)} is not above {node['exclusiveMinimum']}")
    if "oneOf" in node:
        tried: list[list[str]] = []
        for branch in node["oneOf"]:
            found: list[str] = []
            _problems(value, branch, at, found)
            tried.append(found)
        fits = sum(1 for found in tried if not found)
        if fits == 0:
            # The branch it comes closest to says best what is wrong: one whose type fits (its
            # problems lie deeper down: {"kind": "smtp"} is a traffic block, not a wrong null).
            out.extend(min(tried, key=functools.partial(_misfit, where)))
        elif fits > 1:
            out.append(f"{where}: {_shown(value)} fits more than one of the forms allowed")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, item in value.items():
            sub = properties.get(key, extra)
            if sub is False:
                out.append(f"{where}: unexpected key {key!r}")
            elif isinstance(sub, dict):
                _problems(item, sub, f"{at}/{key}" if at else str(key), out)
        # After its values: a block of the wrong kind ({"kind": "smtp"}) is named by its kind first.
        missing = [key for key in node.get("required", ()) if key not in value] if at else []
        if missing:
            out.append(f"{where}: {_LACKS}{', '.join(map(repr, missing))}")
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        items = node["items"]
        if items == _NUMBERS and all(v is None or type(v) in (int, float) for v in value):
            return  # a time series column (a long run has thousands of them): nothing to say, at once
        for i, entry in enumerate(value):
            _problems(entry, items, f"{at}/{i}" if at else str(i), out)


_NUMBERS = {"type": ["number", "null"]}  # the items of a time series column ($defs/column)
_LACKS = "lacks "


def _misfit(where: str, found: list[str]) -> tuple[bool, int]:
    """How badly a oneOf branch missed: its type first (a value itself wrong there; a block lacking
    a key is of the right type: a traffic block without window_s is no wrong null), then by how
    many problems."""
    here, lacks = f"{where}: ", f"{where}: {_LACKS}"
    return any(p.startswith(here) and not p.startswith(lacks) for p in found), len(found)


def _resolve(ref: str) -> dict[str, Any]:
    """A '#/$defs/name' reference of the schema (the only kind it uses)."""
    node: Any = schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict), ref
    return node


def _histogram_problems(rep: dict[str, Any]) -> list[str]:
    """Histograms whose data does not decode (base64, zlib, HDR), as the readers will decode them."""
    from loopfan.results.checks import decode_histogram  # hdrh loads only with the reports

    out = []
    for name in rep.get("histograms") or {}:
        try:
            decode_histogram(rep, name)
        except Exception as exc:  # binascii's, zlib's, hdrh's own: any says the value is damaged
            out.append(f"histograms/{name}/data: not an HDR histogram in compressed base64 ({exc})")
    return out


def _series_problems(rep: dict[str, Any]) -> list[str]:
    """Columns of the time series that are not as long as their time axis ("t_s"): the series' own
    and those grouped under it (latency_ms, health, ...), and each process's against the processes'."""
    out: list[str] = []

    def check(columns: dict[str, Any], length: int, at: str, skip: tuple[str, ...] = ()) -> None:
        for key, col in columns.items():
            if isinstance(col, list) and key not in skip and len(col) != length:
                out.append(f"{at}/{key}: {len(col)} values for {length} times")

    series = rep.get("series")
    if not isinstance(series, dict) or not isinstance(series.get("t_s"), list):
        return out
    check(series, len(series["t_s"]), "series")
    for key, group in series.items():
        if isinstance(group, dict) and key != "processes":
            check(group, len(series["t_s"]), f"series/{key}")
    procs = series.get("processes")
    if isinstance(procs, dict) and isinstance(procs.get("t_s"), list):
        for i, item in enumerate(procs.get("items") or []):
            if isinstance(item, dict):
                check(item, len(procs["t_s"]), f"series/processes/items/{i}", skip=("where",))
    return out


def report_problems(rep: dict[str, Any]) -> list[str]:
    """Every value in `rep` the schema does not allow, every time series column of the wrong length,
    and every histogram that does not decode."""
    out: list[str] = []
    _problems(rep, schema(), "", out)
    out += _series_problems(rep)
    return out or _histogram_problems(rep)  # the histograms are decoded only when they have the right shape


def load_report(path: str) -> dict[str, Any]:
    """A report written by `loopfan run --json`; UsageError (exit 2) for anything else."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; give a report written by `loopfan run --json FILE`") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not JSON ({exc}); give a report written by `loopfan run --json FILE`") from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UsageError(f"{path} is not a loopfan run report (schema {found!r}, expected {REPORT_SCHEMA!r}); "
                         "write one with `loopfan run --json FILE`")
    problems = report_problems(data)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"{path} is a damaged loopfan run report: {problems[0]}{more}; give the file as "
                         "`loopfan run --json FILE` wrote it, or run again")
    return data
