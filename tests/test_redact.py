"""Credentials in --header values stay out of reports (src/loopfan/redact.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loopfan.cli import main
from loopfan.redact import REDACTED, redacted_command, redacted_header, redacted_headers


@pytest.mark.parametrize(("given", "kept"), [
    ("Authorization: Bearer t0k", "Authorization: <redacted>"),
    ("proxy-authorization: Basic eDp5", "proxy-authorization: <redacted>"),
    ("Cookie: sid=9", "Cookie: <redacted>"),
    ("X-Api-Key: k", "X-Api-Key: <redacted>"),
    ("X-Auth-Token:t", "X-Auth-Token: <redacted>"),
    ("Accept: */*", "Accept: */*"),
    ("Origin: http://app", "Origin: http://app"),
    ("Authorization:", "Authorization:"),  # nothing to hide
    ("not a header", "not a header"),
])
def test_a_credential_header_keeps_its_name_and_loses_its_value(given: str, kept: str) -> None:
    assert redacted_header(given) == kept


def test_the_command_line_loses_every_secret_header_value() -> None:
    argv = ["loopfan", "run", "--header", "Authorization: Bearer t0k", "--header=Cookie: a=b", "--header",
            "Accept: x", "--message", "Authorization: not a header option"]
    assert redacted_command(argv) == ["loopfan", "run", "--header", "Authorization: <redacted>",
                                      "--header=Cookie: <redacted>", "--header", "Accept: x", "--message",
                                      "Authorization: not a header option"]
    assert redacted_headers([["Authorization", "x"], ["Accept", "y"]]) == [["Authorization", REDACTED],
                                                                          ["Accept", "y"]]


def test_a_run_report_and_its_page_hold_no_token(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out, page = tmp_path / "run.json", tmp_path / "run.html"
    argv = ["run", "-c", "4", "--traffic", "http", "--header", "Authorization: Bearer s3cr3t-t0k",
            "--header", "X-Trace: 7", "--duration", "0.2s", "-q", "--json", str(out), "--html", str(page)]
    monkeypatch.setattr(sys, "argv", ["loopfan", *argv])  # (the report records the process's command line)
    assert main(argv) == 0
    capsys.readouterr()
    text = out.read_text()
    assert "s3cr3t" not in text and "s3cr3t" not in page.read_text()
    rep = json.loads(text)
    assert ["X-Trace", "7"] in rep["identity"]["config"]["traffic"]["headers"]  # the others as they were
    assert "Authorization: <redacted>" in rep["command"]
