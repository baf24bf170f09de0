"""The report's JSON Schema (package data) and reading a report file back.

Rules of this file: the schema file is the contract (docs/report.md explains it); this module only
loads it, validates against it when jsonschema is installed (the test extra), and turns an
unreadable or foreign file into a UsageError that says what was expected.
"""

from __future__ import annotations

import importlib
import json
from functools import cache
from importlib import resources
from typing import Any

from loopfan.errors import UsageError

REPORT_SCHEMA = "loopfan.report/1"
SCHEMA_FILE = "report.schema.json"


@cache
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
    return data
