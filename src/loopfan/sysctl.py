"""Apply and undo kernel settings for `doctor --fix` / `doctor --undo` (the I/O side of doctor).

Rules of this file: the previous value of every setting loopfan writes is recorded *before* the
write, in a state file, and the first recorded value wins: `--fix` twice then `--undo` restores
what the host had before loopfan ever touched it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from loopfan.doctor import Setting
from loopfan.errors import HostError


def state_dir() -> Path:
    """Where loopfan keeps small state files ($LOOPFAN_STATE_DIR, else XDG state home)."""
    explicit = os.environ.get("LOOPFAN_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "loopfan"


def undo_file() -> Path:
    """The undo record: {setting: value before --fix}."""
    return state_dir() / "sysctl-undo.json"


def _set_file() -> Path:
    """The values --fix wrote ({key: value}), beside the undo record: --undo leaves a setting that
    was changed since alone (absent - a record of an earlier version - nothing is left alone)."""
    return state_dir() / "sysctl-set.json"


def _proc_path(key: str, root: Path) -> Path:
    return root / key.replace(".", "/")


def read_setting(key: str, root: Path = Path("/proc/sys")) -> str:
    """The current value, whitespace normalised ('32768\t60999' -> '32768 60999')."""
    try:
        return " ".join(_proc_path(key, root).read_text().split())
    except FileNotFoundError:
        # e.g. net.netfilter.* before the conntrack module is loaded.
        raise HostError(f"{key} does not exist on this kernel; skip it or load its module first") from None
    except OSError as exc:
        raise HostError(f"cannot read {key}: {exc.strerror}") from None


def write_setting(key: str, value: str, root: Path = Path("/proc/sys")) -> None:
    try:
        _proc_path(key, root).write_text(value + "\n")
    except PermissionError:
        raise HostError(
            f"cannot write {key}: not allowed (run as root, or run the printed command)"
        ) from None
    except OSError as exc:
        raise HostError(f"cannot write {key}={value}: {exc.strerror}") from None


def _read_record(path: Path) -> dict[str, str]:
    """The undo record {key: value before}; a file that is not one is a HostError naming it and the
    way out (QA: '{broken' gave an internal error and blocked --fix) - never guessed around, since
    it holds the only copy of the values to restore."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        data, why = None, getattr(exc, "strerror", None) or "not JSON"
    else:
        why = "not a {setting: value} record"
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) for v in data.values()):
        raise HostError(f"the undo record {path} is damaged ({why}); restore the settings it names by hand "
                        "(sysctl -w KEY=VALUE) and remove the file, then run again")
    return {str(k): str(v) for k, v in data.items()}


def apply(settings: Iterable[Setting], root: Path = Path("/proc/sys")) -> list[tuple[str, str, str]]:
    """Write settings, recording previous values first. Returns (key, old, new) per change made."""
    path, set_path = undo_file(), _set_file()
    recorded: dict[str, str] = _read_record(path) if path.exists() else {}
    written: dict[str, str] = _read_record(set_path) if set_path.exists() else {}
    changes = []
    for s in settings:
        old = read_setting(s.key, root)
        if old == s.value:
            continue
        recorded.setdefault(s.key, old)
        written[s.key] = s.value
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recorded, indent=1) + "\n")
        set_path.write_text(json.dumps(written, indent=1) + "\n")
        write_setting(s.key, s.value, root)
        changes.append((s.key, old, s.value))
    return changes


def recorded() -> dict[str, str]:
    """The settings an earlier apply() changed, with the values they had before: {key: old}."""
    path = undo_file()
    if not path.exists():
        return {}
    return _read_record(path)


def undo(root: Path = Path("/proc/sys"),
         changed_since: list[tuple[str, str, str, str]] | None = None) -> list[tuple[str, str, str]]:
    """Restore every recorded setting; remove the record. Returns (key, current, restored). A setting
    someone changed after --fix is left as it is (not what --fix changed any more): appended to
    `changed_since` as (key, current, what --fix set, the value before --fix)."""
    path, set_path = undo_file(), _set_file()
    if not path.exists():
        return []
    recorded = _read_record(path)
    written = _read_record(set_path) if set_path.exists() else {}
    restored = []
    for key, old in recorded.items():
        current = read_setting(key, root)
        if key in written and current != written[key] and current != old:
            if changed_since is not None:
                changed_since.append((key, current, written[key], old))
            continue
        write_setting(key, old, root)
        restored.append((key, current, old))
    path.unlink()
    set_path.unlink(missing_ok=True)
    return restored
