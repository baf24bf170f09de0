"""Named metrics of a report, and the two small languages that judge them: --check and --gate.

Rules of this file: pure. A report dict (schema loopfan.report/1) goes in, numbers come out; an
expression is parsed once at the CLI edge (a bad one is a UsageError: one line, exit 2) and
evaluated later into a plain dict that the report, the HTML page and the exit status share.
Latency percentiles come from the full-run HDR histogram when the report has one (exact), and
from the rounded summary only for older reports.

  check:  METRIC OP VALUE[UNIT]     connect_latency.p99<50ms   failed==0   established>=1M
  gate:   METRIC:[+|-]AMOUNT[%|UNIT] latency.p99:+10%  connect_rate.mean:-5%  failed:0
          (also any check expression, judged on the new run alone)

A gate without a sign allows that much change in the metric's *bad* direction (up for latency and
failures, down for rates and counts of successes): `failed:0` means "no more failures than the
baseline", `latency.p99:10%` "p99 at most 10 % worse".
"""

from __future__ import annotations

import base64
import math
import operator
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from loopfan.errors import UsageError

# unit -> (dimension, factor to the metric's base unit for that dimension)
_TIME_TO_MS = {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_COUNT = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_BYTES = {"B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3}


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str  # "ms", "s", "", "/s", "B", "%"
    lower_is_better: bool
    help: str


_PCTS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}
_PCT_ALIASES = {"p99.9": "p999", "p99.99": "p9999", "median": "p50"}

METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("established", "", False, "connections established"),
        Metric("target", "", False, "connections asked for"),
        Metric("failed", "", True, "connections that failed, every cause"),
        Metric("peak_concurrent", "", False, "most connections open at once"),
        Metric("connect_rate.mean", "/s", False, "connects per second over the ramp"),
        Metric("connect_rate.peak", "/s", False, "connects in the best second"),
        *[Metric(f"connect_latency.{k}", "ms", True, f"connect latency {k}") for k in (*_PCTS, "max", "mean", "min")],
        *[Metric(f"duration.{k}", "s", True, f"{k} phase") for k in ("start", "connect", "hold", "close", "total")],
        Metric("time_to_target", "s", True, "time until every connection was established"),
        Metric("time_to_half", "s", True, "time until half the connections were established"),
        Metric("cpu", "s", True, "CPU seconds of the worker processes"),
        Metric("memory.client", "B", True, "client workers' unique memory at peak"),
        Metric("memory.server", "B", True, "server workers' unique memory at peak"),
        Metric("memory.kernel", "B", True, "kernel slab growth at peak"),
        Metric("listen_overflows", "", True, "SYNs dropped by full accept queues"),
        Metric("loop_lag.max", "ms", True, "worst worker event-loop lag"),
        Metric("fds.max_pct", "%", True, "fullest worker's open files, % of its limit"),
    ]
}


def metric_for(name: str) -> Metric:
    """The metric called `name` (aliases: latency.X, p99.9, failed.CAUSE)."""
    key = canonical(name)
    if key.startswith("failed."):
        return Metric(key, "", True, f"failures with cause {key[7:]}")
    m = METRICS.get(key)
    if m is None:
        known = ", ".join(sorted(k for k in METRICS if not k.startswith(("duration.", "connect_latency.p9"))))
        raise UsageError(f"unknown metric {name!r}; use one of {known}, connect_latency.pNN, failed.CAUSE")
    return m


def canonical(name: str) -> str:
    name = name.strip()
    if name.startswith("latency."):
        name = "connect_" + name
    for alias, key in _PCT_ALIASES.items():
        if name.endswith("." + alias):
            return name[: -len(alias)] + key
    return name


# -- reading metrics from a report ---------------------------------------------------------------
def decode_histogram(rep: dict[str, Any], name: str = "connect_latency") -> HdrHistogram | None:
    """The full-run histogram stored in a report, or None (older report, or not recorded)."""
    h = (rep.get("histograms") or {}).get(name)
    if not h or not h.get("data"):
        return None
    hist = HdrHistogram.decode(h["data"].encode("ascii"))
    return hist


def histogram_is_compressed(data: str) -> bool:
    """True when `data` is the standard compressed encoding: the V2 compressed cookie (0x1c849304,
    with the word size in bits 4-7: Java and Python write 0x1c849314) and a zlib payload."""
    raw = base64.b64decode(data)
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") & ~0xF0 != 0x1C849304:
        return False
    zlib.decompress(raw[8:])
    return True


def report_metrics(rep: dict[str, Any]) -> dict[str, float | None]:
    """Every named metric of a report, in its base unit (None: not measured)."""
    out: dict[str, float | None] = {
        "established": rep.get("established"),
        "target": rep.get("target_connections"),
        "failed": rep.get("failed_total"),
        "peak_concurrent": rep.get("peak_concurrent"),
        "connect_rate.mean": (rep.get("connect_rate_per_s") or {}).get("mean"),
        "connect_rate.peak": (rep.get("connect_rate_per_s") or {}).get("peak"),
        "cpu": rep.get("cpu_s"),
        "listen_overflows": rep.get("listen_overflows"),
    }
    for cause, n in (rep.get("failed") or {}).items():
        out[f"failed.{cause}"] = n
    for k in ("start", "connect", "hold", "close", "total"):
        out[f"duration.{k}"] = (rep.get("duration_s") or {}).get(k)
    mem = rep.get("memory_bytes") or {}
    for k in ("client", "server", "kernel"):
        out[f"memory.{k}"] = mem.get(f"user_{k}" if k != "kernel" else "kernel")
    reach = rep.get("time_to_target_s") or {}
    out["time_to_target"] = reach.get("100%")
    out["time_to_half"] = reach.get("50%")
    health = ((rep.get("series") or {}).get("health")) or {}
    out["loop_lag.max"] = _max(health.get("loop_lag_ms_max"))
    out["fds.max_pct"] = _max(health.get("fds_used_max_pct"))
    hist = decode_histogram(rep)
    if hist is not None and hist.get_total_count():
        values = hist.get_percentile_to_value_dict(list(_PCTS.values()))
        for k, p in _PCTS.items():
            out[f"connect_latency.{k}"] = values[p] / 1000
        out["connect_latency.max"] = hist.get_max_value() / 1000
        out["connect_latency.min"] = hist.get_min_value() / 1000
        out["connect_latency.mean"] = hist.get_mean_value() / 1000
    else:
        lat = rep.get("connect_latency_ms") or {}
        for k in (*_PCTS, "max"):
            out[f"connect_latency.{k}"] = lat.get(k)
        out["connect_latency.min"] = out["connect_latency.mean"] = None
    return out


def _max(values: list[float | None] | None) -> float | None:
    known = [v for v in values or [] if v is not None]
    return max(known) if known else None


# -- values with units ---------------------------------------------------------------------------
_NUMBER = r"[-+]?(?:\d[\d_,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_VALUE = re.compile(rf"^\s*({_NUMBER})\s*([A-Za-zµ%/]*)\s*$")


def parse_value(text: str, metric: Metric) -> float:
    """'50ms' for a latency -> 50.0; '1M' for a count -> 1e6; '2GiB' for memory; a bare number is the base unit."""
    m = _VALUE.match(text)
    if not m:
        raise UsageError(f"{text!r} is not a number with an optional unit; write e.g. 50ms, 1M or 0")
    number = float(m.group(1).replace("_", "").replace(",", ""))
    unit = m.group(2)
    if metric.unit in ("ms", "s"):
        if unit == "":
            return number
        if unit in _TIME_TO_MS:
            return number * _TIME_TO_MS[unit] / (1.0 if metric.unit == "ms" else 1000.0)
    elif metric.unit == "B":
        if unit in _BYTES or unit in _COUNT:
            return number * _BYTES.get(unit, _COUNT.get(unit, 1.0))
    elif metric.unit == "%":
        if unit in ("", "%"):
            return number
    elif unit.removesuffix("/s") in _COUNT:  # counts and rates: 1000, 10k, 1M, 5k/s
        return number * _COUNT[unit.removesuffix("/s")]
    raise UsageError(f"{text!r}: unit {unit!r} does not fit {metric.name} (measured in "
                     f"{_unit_words(metric.unit)}); write e.g. {_example(metric)}")


def _unit_words(unit: str) -> str:
    return {"ms": "milliseconds", "s": "seconds", "": "a count", "/s": "per second", "B": "bytes",
            "%": "percent"}[unit]


def _example(metric: Metric) -> str:
    return {"ms": "50ms or 2s", "s": "30s or 2m", "": "1000 or 1M", "/s": "5000 or 10k", "B": "512MB or 2GiB",
            "%": "80"}[metric.unit]


# -- checks --------------------------------------------------------------------------------------
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
    "=": operator.eq,
}
_CHECK = re.compile(r"^\s*([A-Za-z_][\w.%]*)\s*(<=|>=|==|!=|<|>|=)\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Check:
    expression: str
    metric: Metric
    op: str
    limit: float

    def evaluate(self, metrics: dict[str, float | None]) -> dict[str, Any]:
        actual = metrics.get(self.metric.name)
        if actual is None and self.metric.name.startswith("failed."):
            actual = 0  # a cause never seen happened zero times
        passed = actual is not None and _OPS[self.op](float(actual), self.limit)
        return {
            "expression": self.expression,
            "kind": "check",
            "metric": self.metric.name,
            "unit": self.metric.unit,
            "op": self.op,
            "limit": self.limit,
            "actual": actual,
            "passed": passed,
            "detail": "not measured in this run" if actual is None else "",
        }


def parse_check(text: str) -> Check:
    m = _CHECK.match(text)
    if not m:
        raise UsageError(f"check {text!r} is not METRIC OP VALUE; write e.g. 'connect_latency.p99<50ms' or "
                         "'failed==0'")
    metric = metric_for(m.group(1))
    try:
        limit = parse_value(m.group(3), metric)
    except UsageError as exc:
        raise UsageError(f"check {text!r}: {exc}") from None
    return Check(text.strip(), metric, m.group(2), limit)


def run_checks(checks: list[Check], rep: dict[str, Any]) -> list[dict[str, Any]]:
    metrics = report_metrics(rep)
    return [c.evaluate(metrics) for c in checks]


# -- gates (a baseline and a new run) ------------------------------------------------------------
_GATE = re.compile(r"^\s*([A-Za-z_][\w.%]*)\s*:\s*([+-]?)\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Gate:
    expression: str
    metric: Metric
    direction: str  # "up": fails when the new value rises beyond the allowance; "down": falls beyond it
    amount: float
    relative: bool  # amount is a percentage of the baseline
    check: Check | None = None  # a check expression given as a gate: judged on the new run

    def evaluate(self, base: dict[str, float | None], new: dict[str, float | None]) -> dict[str, Any]:
        if self.check is not None:
            judged = self.check.evaluate(new)
            judged["kind"] = "gate"
            return judged
        b, n = base.get(self.metric.name), new.get(self.metric.name)
        if self.metric.name.startswith("failed."):
            b, n = b or 0, n or 0
        out: dict[str, Any] = {
            "expression": self.expression, "kind": "gate", "metric": self.metric.name, "unit": self.metric.unit,
            "baseline": b, "actual": n, "passed": False, "detail": "",
        }
        if b is None or n is None:
            out["detail"] = "not measured in " + ("the baseline" if b is None else "the new run")
            return out
        allowance = abs(b) * self.amount / 100 if self.relative else self.amount
        limit = b + allowance if self.direction == "up" else b - allowance
        out["limit"] = limit
        out["passed"] = n <= limit if self.direction == "up" else n >= limit
        if not math.isfinite(limit):
            out["passed"] = True
        return out


def parse_gate(text: str) -> Gate:
    if _CHECK.match(text) and ":" not in text:
        check = parse_check(text)
        return Gate(text.strip(), check.metric, "up", 0.0, False, check)
    m = _GATE.match(text)
    if not m:
        raise UsageError(f"gate {text!r} is not METRIC:[+|-]AMOUNT[%]; write e.g. 'latency.p99:+10%', "
                         "'connect_rate.mean:-5%' or 'failed:0'")
    metric = metric_for(m.group(1))
    sign, amount_text = m.group(2), m.group(3)
    up = sign == "+" if sign else metric.lower_is_better
    direction = "up" if up else "down"
    relative = amount_text.endswith("%") and metric.unit != "%"
    try:
        amount = float(amount_text[:-1].replace("_", "")) if relative else parse_value(amount_text, metric)
    except (UsageError, ValueError) as exc:
        raise UsageError(f"gate {text!r}: {exc}") from None
    if amount < 0:
        raise UsageError(f"gate {text!r}: the allowance must not be negative; put the direction in the sign")
    return Gate(text.strip(), metric, direction, amount, relative)


def run_gates(gates: list[Gate], base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    bm, nm = report_metrics(base), report_metrics(new)
    return [g.evaluate(bm, nm) for g in gates]
