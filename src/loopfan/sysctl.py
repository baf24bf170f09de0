"""Apply and undo kernel settings for `doctor --fix` / `doctor --undo` (the I/O side of doctor).

Rules of this file: the previous value of every setting loopfan writes is recorded *before* the
write, in a state file, and the first recorded value wins: `--fix` twice then `--undo` restores
what the host had before loopfan ever touched it. The record is the host's, not a user's: it lives
in a fixed root-owned directory (SYSTEM_STATE_DIR); where earlier versions kept it is still read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from loopfan.doctor import Setting
from loopfan.errors import HostError


def state_dir() -> Path:
    """Where loopfan keeps a user's small state files ($LOOPFAN_STATE_DIR, else XDG state home):
    the macOS alias record. (doctor's undo record is the host's: undo_dir.)"""
    explicit = os.environ.get("LOOPFAN_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "loopfan"


# Kernel settings belong to the host, so their undo record does too. Kept under the state home of
# whoever ran --fix, it was lost when HOME differed between --fix and --undo (`sudo` versus
# `sudo -i` or `sudo -H`, sudoers' always_set_home/env_keep, Ubuntu's sudo before 19.10 keeping the
# caller's HOME), and --undo said "nothing to undo" with the settings still changed. /var/lib is
# the FHS place for state that belongs to no user and outlives a reboot.
SYSTEM_STATE_DIR = Path("/var/lib/loopfan")
_UNDO_NAME, _SET_NAME = "sysctl-undo.json", "sysctl-set.json"


def undo_dir() -> Path:
    """Where --fix writes the undo record: $LOOPFAN_STATE_DIR, else SYSTEM_STATE_DIR."""
    explicit = os.environ.get("LOOPFAN_STATE_DIR")
    return Path(explicit) if explicit else SYSTEM_STATE_DIR


def _home_of(user: str) -> Path | None:
    try:
        import pwd

        return Path(pwd.getpwnam(user).pw_dir)
    except (ImportError, KeyError):
        return None


def _earlier_dirs() -> list[Path]:
    """Where earlier versions kept the record - the XDG state home of whoever ran --fix - as seen
    from here: this HOME's, the sudo caller's (SUDO_USER) and root's. Read for compatibility."""
    if os.environ.get("LOOPFAN_STATE_DIR"):
        return []
    dirs = [state_dir()]
    for user in (os.environ.get("SUDO_USER"), "root"):
        home = _home_of(user) if user else None
        if home is not None:
            dirs.append(home / ".local" / "state" / "loopfan")
    return list(dict.fromkeys(dirs))


def _record_dir() -> Path:
    """The directory holding the record now: undo_dir(), else the first earlier one with a record."""
    here = undo_dir()
    if (here / _UNDO_NAME).exists():
        return here
    return next((d for d in _earlier_dirs() if (d / _UNDO_NAME).exists()), here)


def undo_file() -> Path:
    """The undo record: {setting: value before --fix}."""
    return _record_dir() / _UNDO_NAME


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
    """Write settings, recording previous values first. Returns (key, old, new) per change made.
    A record found where an earlier version kept it is moved to undo_dir() with the first change."""
    found = _record_dir()
    path, set_path = found / _UNDO_NAME, found / _SET_NAME
    recorded: dict[str, str] = _read_record(path) if path.exists() else {}
    written: dict[str, str] = _read_record(set_path) if set_path.exists() else {}
    here = undo_dir()
    changes = []
    for s in settings:
        old = read_setting(s.key, root)
        if old == s.value:
            continue
        recorded.setdefault(s.key, old)
        written[s.key] = s.value
        _write_record(here / _UNDO_NAME, recorded)
        _write_record(here / _SET_NAME, written)
        if found != here:  # moved: the earlier copy would be undone a second time
            path.unlink(missing_ok=True)
            set_path.unlink(missing_ok=True)
            found = here
        write_setting(s.key, s.value, root)
        changes.append((s.key, old, s.value))
    return changes


def _write_record(path: Path, record: dict[str, str]) -> None:
    """World-readable: `doctor --undo` without root reads it to print the commands to run."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        path.chmod(0o644)
    except OSError as exc:
        raise HostError(f"cannot write the undo record {path}: {exc.strerror}; run as root (sudo loopfan "
                        "doctor --fix), or set LOOPFAN_STATE_DIR to a writable directory") from None


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
    found = _record_dir()
    path, set_path = found / _UNDO_NAME, found / _SET_NAME
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
