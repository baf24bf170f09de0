"""bench/_runs.py: which loopfan a benchmark runs. Nothing is timed here (tests never time anything)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _runs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_runs", ROOT / "bench" / "_runs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks its module up there)
    spec.loader.exec_module(module)
    return module


def test_a_benchmark_runs_this_checkouts_loopfan_unless_told_otherwise() -> None:
    """QA: with no PYTHONPATH, `python -m loopfan` in bench/ imported the installed loopfan - on a
    machine with an editable install of another clone, that clone was measured as "loopfan"."""
    runs = _runs()
    src = str(ROOT / "src")
    assert src == runs.CHECKOUT_SRC
    assert runs.run_env(None, {"HOME": "/root"}) == {"HOME": "/root", "PYTHONPATH": src}
    assert runs.run_env(None, {"PYTHONPATH": "/chosen/src"})["PYTHONPATH"] == "/chosen/src"
    assert runs.run_env("/old/src", {"PYTHONPATH": "/chosen/src"})["PYTHONPATH"] == "/old/src"
    # And the child really imports this checkout's package with that environment.
    env = runs.run_env(None, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    where = subprocess.run([sys.executable, "-c", "import loopfan; print(loopfan.__file__)"], env=env, cwd="/",
                           capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert where == str(ROOT / "src" / "loopfan" / "__init__.py")
