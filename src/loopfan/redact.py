"""Secrets kept out of reports: header values that carry credentials (pure functions).

A report (JSON, page) records the command line and the traffic configuration so a run can be told
apart and repeated - and reports are shared: attached to CI jobs, pasted into issues. A
`--header 'Authorization: Bearer ...'` must not travel with them. Its name stays (the run did send
one), its value is replaced. URL credentials never reach a report: `run` refuses them.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"
# Header names whose values are credentials: Authorization, Proxy-Authorization, Cookie,
# X-Api-Key, X-Auth-Token, a session id ...
_SECRET_NAME = re.compile(r"auth|cookie|token|secret|passw|api[-_]?key|session|credential", re.IGNORECASE)


def secret_header(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redacted_header(text: str) -> str:
    """'Authorization: Bearer x' -> 'Authorization: <redacted>'; other headers as they are."""
    name, colon, value = text.partition(":")
    return f"{name}: {REDACTED}" if colon and value.strip() and secret_header(name) else text


def redacted_command(argv: list[str]) -> list[str]:
    """The command line with every --header's secret value replaced (`--header X` and `--header=X`)."""
    out: list[str] = []
    after_header = False
    for arg in argv:
        if after_header:
            out.append(redacted_header(arg))
            after_header = False
        elif arg == "--header":
            out.append(arg)
            after_header = True
        elif arg.startswith("--header="):
            out.append("--header=" + redacted_header(arg[len("--header="):]))
        else:
            out.append(arg)
    return out


def redacted_headers(headers: list[list[str]]) -> list[list[str]]:
    """A configuration's [[name, value], ...] with the secret values replaced."""
    return [[name, REDACTED if secret_header(name) and value else value] for name, value in headers]
