"""Named metrics of a report, and the two small languages that judge them: --check and --gate.

Rules of this file: pure. A report dict (schema loopfan.report/1) goes in, numbers come out; an
expression is parsed once at the CLI edge (a bad one is a UsageError: one line, exit 2) and
evaluated later into a plain dict that the report, the HTML page and the exit status share.
Connect latency percentiles come from the full-run HDR histogram when the report has one (exact),
and from the rounded summary only for older reports. Traffic metrics (`traffic.*`) are read from
the report's "traffic" block, whose percentiles the run computed from its merged full-run HDR
histograms (report.json stores them too, as histograms.latency and histograms.ttfb, but reports
of earlier versions lack them, and the block's figures are the same numbers).

  check:  METRIC OP VALUE[UNIT]     connect_latency.p99<50ms   failed==0   traffic.latency.p99<10ms
  gate:   METRIC:[+|-]AMOUNT[%|UNIT] latency.p99:+10%  connect_rate.mean:-5%  failed:0  traffic.errors:0
          (also any check expression, judged on the new run alone)

A gate without a sign allows that much change in the metric's *bad* direction (up for latency and
failures, down for rates and counts of successes): `failed:0` means "no more failures than the
baseline", `latency.p99:10%` "p99 at most 10 % worse".

`latency.X` is the latency the run is about: message latency (`traffic.latency.X`; a request's for
HTTP) when the report has traffic (for a gate: when either report has), connect latency
(`connect_latency.X`) otherwise. It is resolved when judged, against the report; a result keeps the
expression exactly as typed and, on a run with traffic, says what it meant in "label" in the words
the report uses for its kind ("request latency" for HTTP, "message latency" for echo, raw and
WebSocket: wording.traffic_nouns; `described` puts the two together for people:
"latency.p99 (request latency)<5ms"). Before traffic existed it always meant connect
latency, which on a traffic run judged the 0.4 ms connects and passed over 12 ms requests. (Refusing
the alias instead would come too late for `run`: a check is parsed before the run, while whether
the report has traffic is known after it, and an error then would lose the run's report.)
"""

from __future__ import annotations

import base64
import difflib
import math
import operator
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from loopfan.engine.causes import CAUSES, ERRNO_CAUSES, is_errno_cause
from loopfan.errors import UsageError
from loopfan.traffic.causes import FAMILIES, MEANINGS, is_traffic_cause, known_traffic_causes
from loopfan.traffic.report import nothing_to_talk_over
from loopfan.wording import traffic_nouns

# unit -> (dimension, factor to the metric's base unit for that dimension)
_TIME_TO_MS = {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_COUNT = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_BYTES = {"B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3}


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str  # "ms", "s", "", "/s", "B", "B/s", "%"
    lower_is_better: bool
    help: str


_PCTS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}
_PCT_ALIASES = {"p99.9": "p999", "p99.99": "p9999", "median": "p50"}
# The figures the traffic block gives for each of its two latency histograms (no min there).
_TRAFFIC_LATENCY_KEYS = (*_PCTS, "max", "mean")
# latency.X is an alias (resolved per report, see the module docstring) for these X only: the ones
# both connect latency and request latency have.
_ALIAS_KEYS = _TRAFFIC_LATENCY_KEYS
# Statuses that are successes: more of them is better. Every other status (http-4xx, http-5xx,
# ws-close-CODE, 1xx/3xx) is worse when it rises.
_GOOD_STATUSES = ("http-2xx", "ws-handshake-ok", "tls-handshake-ok")

# A run's phases in order, as duration_s names them (engine/runner.py): one list for the metrics
# a check may name and the values a report gives them.
PHASES = ("start", "connect", "measure", "traffic", "hold", "close", "stop", "total")

METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("established", "", False, "connections established"),
        Metric("target", "", False, "connections asked for"),
        Metric("failed", "", True, "connections that failed, every cause"),
        Metric("peak_concurrent", "", False, "most connections open at once"),
        Metric("connect_rate.mean", "/s", False, "connects per second over the ramp"),
        Metric("connect_rate.peak", "/s", False, "connect rate in the fastest 1 s window (a shorter ramp: its mean)"),
        *[Metric(f"connect_latency.{k}", "ms", True, f"connect latency {k}") for k in (*_PCTS, "max", "mean", "min")],
        *[Metric(f"duration.{k}", "s", True, f"{k} phase") for k in PHASES],
        Metric("time_to_target", "s", True, "time until every connection was open at once"),
        Metric("time_to_half", "s", True, "time until half the connections were open at once"),
        Metric("cpu", "s", True, "CPU seconds of the worker processes"),
        # The client side as the run report shows it: the workers and the parent that ran them.
        Metric("memory.client", "B", True, "client workers' and the parent's unique memory at peak"),
        Metric("memory.server", "B", True, "server workers' unique memory at peak"),
        Metric("memory.kernel", "B", True, "kernel slab growth at peak"),
        Metric("listen_overflows", "", True, "SYNs dropped by full accept queues"),
        Metric("loop_lag.max", "ms", True, "worst worker event-loop lag before the close"),
        Metric("fds.max_pct", "%", True, "fullest worker's open files, % of its limit"),
        # Traffic (report.json "traffic"): the names are the block's keys without their unit suffix.
        Metric("traffic.messages_per_s", "/s", False, "messages completed per second in the measured window"),
        Metric("traffic.bytes_in_per_s", "B/s", False, "bytes received per second in the window"),
        Metric("traffic.bytes_out_per_s", "B/s", False, "bytes sent per second in the window"),
        *[Metric(f"traffic.latency.{k}", "ms", True, f"message latency {k}") for k in _TRAFFIC_LATENCY_KEYS],
        *[Metric(f"traffic.ttfb.{k}", "ms", True, f"time to first byte {k}") for k in _TRAFFIC_LATENCY_KEYS],
        Metric("traffic.errors", "", True, "traffic errors in the window, every cause"),
        Metric("traffic.replies", "", False, "replies completed in the window"),
        Metric("traffic.sent", "", False, "messages sent in the window"),
        Metric("traffic.samples", "", False, "latency samples (messages started in the window)"),
        Metric("traffic.unanswered", "", True, "messages still unanswered at the end"),
        Metric("traffic.unsent", "", True, "messages due but never sent (open model)"),
        Metric("traffic.lost", "", True, "messages in flight on connections that ended (never answered)"),
        Metric("traffic.reopened", "", True, "connections the server closed during the traffic, reopened"),
        Metric("traffic.talking.start", "", False, "connections talking at the start"),
        Metric("traffic.talking.end", "", False, "connections talking at the end"),
    ]
}

# Families counted by cause or status: a member never seen happened zero times, in a report that
# counted the family (the metric named here is measured there; statuses are counted wherever the
# traffic errors are). A hold-only report counted no traffic: traffic.errors.X is "not measured"
# there, not 0.
_FAMILIES = {"failed.": "failed", "traffic.errors.": "traffic.errors", "traffic.statuses.": "traffic.errors"}


def metric_for(name: str) -> Metric:
    """The metric called `name` (aliases: latency.X, p99.9; families: failed.CAUSE,
    traffic.errors.CAUSE, traffic.statuses.NAME)."""
    key = canonical(name)
    m = _lookup(key)
    if m is None:
        hint = _suggest(key)
        did_you_mean = f"did you mean {hint}? " if hint else ""
        raise UsageError(f"unknown metric {name!r}; {did_you_mean}use one of {known_metrics()}")
    return m


def expression_metric(name: str) -> Metric:
    """metric_for, for a name the user typed: also refuses a cause or status no run can count.
    (Reports are read with metric_for alone: a name a report holds was counted by some run.)"""
    metric = metric_for(name)
    _refuse_unknown_member(name, metric.name)
    return metric


def _refuse_unknown_member(name: str, key: str) -> None:
    """A cause or status no run can count makes a check that always passes (its count stays 0):
    refuse it, naming the one most likely meant. One that can happen but did not in this run stays
    valid (it is 0, and passes). Connection failure causes are a closed set (engine.causes: the named
    ones and errno names); traffic error causes are named ones plus open families (traffic.causes:
    http-5xx, ws-close-1011, ws-rejected-http-401, errno names); statuses have a fixed shape."""
    if key.startswith("failed."):
        cause = key[7:]
        if cause in CAUSES or is_errno_cause(cause):
            return
        hint = _nearest(cause, [*CAUSES, *ERRNO_CAUSES])
        did_you_mean = f"did you mean failed.{hint}? " if hint else ""
        raise UsageError(f"unknown failure cause in {name!r}; {did_you_mean}known causes: {', '.join(CAUSES)} "
                         "(or any errno name, e.g. failed.EHOSTUNREACH)")
    if key.startswith("traffic.errors."):
        cause = key[15:]
        if is_traffic_cause(cause):
            return
        if _STATUS.fullmatch(cause):  # http-2xx, ws-handshake-ok: counted, but as statuses, never as errors
            raise UsageError(f"{cause} in {name!r} is a status, not a traffic error; "
                             f"write traffic.statuses.{cause}")
        hint = _traffic_cause_hint(cause)
        did_you_mean = f"did you mean traffic.errors.{hint}? " if hint else ""
        raise UsageError(f"unknown traffic error cause in {name!r}; {did_you_mean}known causes: "
                         f"{known_traffic_causes()}")
    if key.startswith("traffic.statuses.") and not _STATUS.fullmatch(key[17:]):
        raise UsageError(f"unknown status in {name!r}; statuses are http-1xx ... http-5xx, "
                         "http-connection-close, ws-handshake-ok, tls-handshake-ok, ws-close-CODE (e.g. "
                         "ws-close-1011) and ws-subprotocol-NAME (or -none)")


def _nearest(name: str, known: list[str]) -> str | None:
    """The known name a mistyped one most likely meant: the closest spelling, else the same in another case."""
    close = difflib.get_close_matches(name, known, 1, 0.6)
    return close[0] if close else next((k for k in known if k.lower() == name.lower()), None)


def _traffic_cause_hint(cause: str) -> str | None:
    """The traffic error cause an unknown name most likely meant: an HTTP status is counted by its
    class (http-503 -> http-5xx), a family member with the wrong tail is shown the family's shape
    (ws-close-normal -> ws-close-CODE), anything else by spelling."""
    status = re.fullmatch(r"http-([4-9])\d\d", cause)
    if status:
        return f"http-{status.group(1)}xx"
    for shape, _ in FAMILIES:
        prefix = shape.split("CODE")[0].split("STATUS")[0]
        if shape != prefix and cause.startswith(prefix):
            return shape
    return _nearest(cause, [*MEANINGS, *ERRNO_CAUSES])


_STATUS = re.compile(r"http-[1-5]xx|http-connection-close|ws-handshake-ok|tls-handshake-ok|ws-close-\d+"
                     r"|ws-subprotocol-[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # (a subprotocol is an HTTP token)


def _lookup(key: str) -> Metric | None:
    if key.startswith("failed.") and len(key) > 7:
        return Metric(key, "", True, f"failures with cause {key[7:]}")
    if key.startswith("traffic.errors.") and len(key) > 15:
        return Metric(key, "", True, f"traffic errors with cause {key[15:]}")
    if key.startswith("traffic.statuses.") and len(key) > 17:
        status = key[17:]
        chosen = status.startswith("ws-subprotocol-") and status != "ws-subprotocol-none"  # (one asked for)
        return Metric(key, "", status not in _GOOD_STATUSES and not chosen, f"replies with status {status}")
    if key.startswith("latency.") and key[8:] in _ALIAS_KEYS:
        return Metric(key, "ms", True, f"message latency {key[8:]} on a run with traffic, connect latency otherwise")
    return METRICS.get(key)


# Names people try, from the report's keys or other tools, and the metric they mean.
_GUESSES = (("request_latency.", "traffic.latency."), ("first_byte.", "traffic.ttfb."), ("ttfb.", "traffic.ttfb."),
            ("traffic_errors", "traffic.errors"), ("errors", "traffic.errors"), ("status.", "traffic.statuses."),
            ("statuses.", "traffic.statuses."), ("latency.", "connect_latency."))


def _suggest(key: str) -> str | None:
    """The one metric an unknown name most likely meant, or None."""
    unsuffixed = key.replace("_ms.", ".").replace("_total", "").replace("_at_end", "")
    tries = [unsuffixed, f"traffic.{unsuffixed}",
             *(new + key[len(old):] for old, new in _GUESSES if key.startswith(old))]
    for guess in tries:
        m = _lookup(guess)
        if m is not None and guess != key:
            return m.name
    close = difflib.get_close_matches(key, [*METRICS, *(f"latency.{k}" for k in _ALIAS_KEYS)], 1, 0.8)
    return close[0] if close else None


def known_metrics() -> str:
    """Every metric name, families folded: 'connect_latency.{pNN,max,mean,min}', 'failed.CAUSE'."""
    groups: dict[str, list[str]] = {}
    for name in METRICS:
        head, _, tail = name.rpartition(".")
        if head and (head.endswith("latency") or head.endswith("ttfb") or head == "duration"):
            groups.setdefault(head, [])
            tail = "pNN" if tail in _PCTS else tail
            if tail not in groups[head]:
                groups[head].append(tail)
        else:
            groups[name] = []
    names = [f"{head}.{{{','.join(tails)}}}" if tails else head for head, tails in groups.items()]
    names.insert(names.index("failed") + 1, "failed.CAUSE")
    names.insert(names.index("traffic.errors") + 1, "traffic.errors.CAUSE")
    names.insert(names.index("traffic.errors") + 2, "traffic.statuses.NAME")
    names.append("latency.{pNN,max,mean} (message latency with traffic - a request's for HTTP -, connect latency "
                 "without)")
    return ", ".join(names)


def canonical(name: str) -> str:
    name = name.strip()
    for alias, key in _PCT_ALIASES.items():
        if name.endswith("." + alias):
            return name[: -len(alias)] + key
    return name


def resolve(metric: Metric, traffic: bool, kind: str | None = None) -> tuple[Metric, str]:
    """The metric `metric` stands for in a report with (or without) traffic, and the label a result
    carries: latency.X -> (traffic.latency.X, "request latency") with HTTP traffic ("message latency"
    with `kind` another protocol's), (connect_latency.X, "") without - what it has always meant
    there, so those results read as before; any other metric -> (itself, "")."""
    if not metric.name.startswith("latency."):
        return metric, ""
    key = metric.name[8:]
    if traffic:
        return METRICS[f"traffic.latency.{key}"], f"{traffic_nouns(kind, one=True)[0]} latency"
    return METRICS[f"connect_latency.{key}"], ""


def described(result: dict[str, Any]) -> str:
    """A judged check or gate for people: 'latency.p99<5ms' with label 'request latency' ->
    'latency.p99 (request latency)<5ms' - the alias's meaning, said where it is read."""
    expression, label = str(result["expression"]), result.get("label") or ""
    if not label:
        return expression
    m = _NAME.match(expression)
    return expression if m is None else f"{expression[: m.end()]} ({label}){expression[m.end():]}"


def value_of(metrics: dict[str, float | None], name: str) -> float | None:
    """metrics[name], with a family member never seen as 0 where the family was counted."""
    value = metrics.get(name)
    if value is None:
        for prefix, family in _FAMILIES.items():
            if name.startswith(prefix) and metrics.get(family) is not None:
                return 0
    return value


def has_traffic(rep: dict[str, Any] | None) -> bool:
    return bool((rep or {}).get("traffic"))


def traffic_kind(rep: dict[str, Any] | None) -> str | None:
    """The protocol a report's traffic spoke ('http', 'echo', 'ws', 'raw'); None without traffic."""
    kind = ((rep or {}).get("traffic") or {}).get("kind")
    return str(kind) if kind else None


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
    for k in PHASES:
        out[f"duration.{k}"] = (rep.get("duration_s") or {}).get(k)
    mem = rep.get("memory_bytes") or {}
    out["memory.client"] = _client_memory(mem)
    out["memory.server"] = mem.get("user_server")
    out["memory.kernel"] = mem.get("kernel")
    reach = rep.get("time_to_target_s") or {}
    out["time_to_target"] = reach.get("100%")
    out["time_to_half"] = reach.get("50%")
    series = rep.get("series") or {}
    health = series.get("health") or {}
    out["loop_lag.max"] = _max(_before_the_close(health.get("loop_lag_ms_max"), series.get("phase")))
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
    out.update(_traffic_metrics(rep.get("traffic")))
    return out


def _traffic_metrics(tr: dict[str, Any] | None) -> dict[str, float | None]:
    """The traffic.* metrics of a report's "traffic" block; all None without one (a hold-only run),
    and when its traffic never ran (no connection was open as the phase began: its 0 errors are no
    clean run, and traffic.errors==0 or a gate 'traffic.errors:0' must not pass on it - they fail
    as not measured, as for a hold-only run, in run --check, compare and trend alike).
    Its percentiles are the merged full-run HDR histograms' values, unrounded, so deltas between
    two reports are exact like connect latency's; the mean is rounded to the microsecond."""
    if tr and nothing_to_talk_over(tr):
        tr = None
    tr = tr or {}
    out: dict[str, float | None] = {
        "traffic.messages_per_s": tr.get("messages_per_s"),
        "traffic.bytes_in_per_s": tr.get("bytes_in_per_s"),
        "traffic.bytes_out_per_s": tr.get("bytes_out_per_s"),
        "traffic.errors": tr.get("errors_total"),
        "traffic.replies": tr.get("replies_in_window"),
        # Older traffic reports have no sent_in_window: their "sent" counted the warm-up too.
        "traffic.sent": tr.get("sent_in_window"),
        "traffic.samples": tr.get("samples"),
        "traffic.unanswered": tr.get("unanswered_at_end"),
        "traffic.unsent": tr.get("unsent_at_end"),
        # (a traffic report from before these were counted had none)
        "traffic.lost": tr.get("lost_in_flight", 0) if tr else None,
        "traffic.reopened": tr.get("connections_reopened", 0) if tr else None,
        "traffic.talking.start": tr.get("connections_talking_at_start"),
        "traffic.talking.end": tr.get("connections_talking_at_end"),
    }
    for name, block in (("latency", "latency_ms"), ("ttfb", "ttfb_ms")):
        values = tr.get(block) or {}
        for k in _TRAFFIC_LATENCY_KEYS:
            out[f"traffic.{name}.{k}"] = values.get(k)
    for cause, n in (tr.get("errors") or {}).items():
        out[f"traffic.errors.{cause}"] = n
    for status, n in (tr.get("statuses") or {}).items():
        out[f"traffic.statuses.{status}"] = n
    return out


def _client_memory(mem: dict[str, Any]) -> float | None:
    """The client side's memory as the run report states it ("incl. the parent"): the workers plus
    the parent process, so `compare` shows the figure the run showed (reports from before the parent
    was measured have no user_parent: the workers alone)."""
    workers = mem.get("user_client")
    if workers is None:
        return None
    return float(workers + (mem.get("user_parent") or 0))


# The close and the workers' stop measure nothing: closing 18,750 sockets, or reading as many FINs,
# keeps a worker from its epoll wait for seconds (QA: 2,218 ms at 300,000 connections, against 225 ms
# at worst while they connected and none while they were held), and a loop_lag.max gate on a hold
# run judged that.
_UNMEASURED_PHASES = frozenset({"closing", "stopping"})


def _before_the_close(values: list[float | None] | None, phases: list[str] | None) -> list[float | None]:
    """The rows of a series column up to the close (every row when the series has no phases)."""
    if not values or not phases:
        return list(values or [])
    return [v for v, phase in zip(values, phases, strict=False) if phase not in _UNMEASURED_PHASES]


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
    elif metric.unit in ("B", "B/s"):  # 512MB; a rate takes /s or not: 10MB/s, 10MB
        unit = unit.removesuffix("/s") if metric.unit == "B/s" else unit
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
            "B/s": "bytes per second", "%": "percent"}[unit]


def _example(metric: Metric) -> str:
    return {"ms": "50ms or 2s", "s": "30s or 2m", "": "1000 or 1M", "/s": "5000 or 10k", "B": "512MB or 2GiB",
            "B/s": "10MB/s or 1GB/s", "%": "80"}[metric.unit]


# -- checks --------------------------------------------------------------------------------------
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
# Metric names hold dashes (failed.closed-by-peer, traffic.statuses.http-5xx) and an @
# (failed.EADDRNOTAVAIL@connect: the cause says where it happened).
_NAME = re.compile(r"^\s*[A-Za-z_][\w.%@-]*")
_CHECK = re.compile(r"^\s*([A-Za-z_][\w.%@-]*)\s*(<=|>=|==|!=|<|>|=)\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Check:
    expression: str
    metric: Metric
    op: str
    limit: float

    def evaluate(self, metrics: dict[str, float | None], *, traffic: bool = False,
                 kind: str | None = None) -> dict[str, Any]:
        """Judge the run whose metrics these are; `traffic`: it talked (latency.X is its message
        latency), `kind` its protocol (the label's words: "request latency" for HTTP)."""
        metric, label = resolve(self.metric, traffic, kind)
        actual = value_of(metrics, metric.name)
        passed = actual is not None and _OPS[self.op](float(actual), self.limit)
        return {
            "expression": self.expression,
            **({"label": label} if label else {}),
            "kind": "check",
            "metric": metric.name,
            "unit": metric.unit,
            "op": self.op,
            "limit": self.limit,
            "actual": actual,
            "passed": passed,
            "detail": "not measured in this run" if actual is None else "",
        }


def parse_check(text: str) -> Check:
    m = _CHECK.match(text)
    if m and m.group(2) == "=":
        # A lone '=' reads as assignment in most languages and as equality in SQL: refused rather
        # than guessed (it was accepted as == but documented nowhere).
        fixed = f"{m.group(1)}=={m.group(3)}"
        raise UsageError(f"check {text!r}: '=' is not an operator here; write {fixed!r} (== for equality)")
    if not m:
        raise UsageError(f"check {text!r} is not METRIC OP VALUE; write e.g. 'connect_latency.p99<50ms' or "
                         "'failed==0'")
    metric = expression_metric(m.group(1))
    try:
        limit = parse_value(m.group(3), metric)
    except UsageError as exc:
        raise UsageError(f"check {text!r}: {exc}") from None
    return Check(text.strip(), metric, m.group(2), limit)


def run_checks(checks: list[Check], rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Judge every check on the run. On an interrupted run (a partial report) each fails, as every
    gate does in compare: its figures stop at the signal - 0 failures of the 40,000 connections
    opened by then, a p99 without the ramp's end - and `"passed": true` in its JSON read as a green
    run to whatever reads the checks (the exit status, 130/143, is the signal's)."""
    metrics = report_metrics(rep)
    results = [c.evaluate(metrics, traffic=has_traffic(rep), kind=traffic_kind(rep)) for c in checks]
    if interrupted(rep):
        judged_partial(results, [partial_reason("the run", rep, "a partial run passes no check")])
    return results


# -- gates (a baseline and a new run) ------------------------------------------------------------
_GATE = re.compile(r"^\s*([A-Za-z_][\w.%@-]*)\s*:\s*([+-]?)\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Gate:
    expression: str
    metric: Metric
    direction: str  # "up": fails when the new value rises beyond the allowance; "down": falls beyond it
    amount: float
    relative: bool  # amount is a percentage of the baseline
    check: Check | None = None  # a check expression given as a gate: judged on the new run

    def evaluate(self, base: dict[str, float | None], new: dict[str, float | None], *,
                 traffic: bool = False, kind: str | None = None) -> dict[str, Any]:
        """Judge NEW against BASE; `traffic`: either run talked, so latency.X is message latency in
        both (one meaning for the pair: a gate never compares connects with requests); `kind`: the
        protocol the label is worded for."""
        if self.check is not None:
            judged = self.check.evaluate(new, traffic=traffic, kind=kind)
            judged["kind"] = "gate"
            return judged
        metric, label = resolve(self.metric, traffic, kind)
        b, n = value_of(base, metric.name), value_of(new, metric.name)
        out: dict[str, Any] = {
            "expression": self.expression, **({"label": label} if label else {}), "kind": "gate",
            "metric": metric.name,
            "unit": metric.unit, "baseline": b, "actual": n, "passed": False, "detail": "",
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
    metric = expression_metric(m.group(1))
    sign, amount_text = m.group(2), m.group(3)
    up = sign == "+" if sign else metric.lower_is_better
    direction = "up" if up else "down"
    relative = amount_text.endswith("%") and metric.unit != "%"
    if not relative and metric.unit in _UNIT_NEEDED and re.fullmatch(_NUMBER, amount_text.strip()) \
            and float(amount_text.strip().replace("_", "").replace(",", "")) != 0:
        # 'latency.p99:+10' read as +10 ms where +10 % was meant: a gate that never fails. Say which.
        raise UsageError(f"gate {text!r}: is {amount_text.strip()} a percentage or {_unit_words(metric.unit)}? "
                         f"write {m.group(1)}:{sign or '+'}{amount_text.strip()}% (relative to the baseline) or "
                         f"{m.group(1)}:{sign or '+'}{amount_text.strip()}{metric.unit} (absolute)")
    try:
        amount = _percent(amount_text) if relative else parse_value(amount_text, metric)
    except UsageError as exc:
        raise UsageError(f"gate {text!r}: {exc}") from None
    if amount < 0:
        raise UsageError(f"gate {text!r}: the allowance must not be negative; put the direction in the sign")
    return Gate(text.strip(), metric, direction, amount, relative)


# Units a gate's absolute allowance must name: a bare number there is more often a forgotten %.
_UNIT_NEEDED = ("ms", "s", "B", "B/s")


def _percent(text: str) -> float:
    """'10%' -> 10.0; anything else before the % is refused in words (not float()'s message)."""
    number = text[:-1].strip().replace("_", "")
    if not re.fullmatch(_NUMBER, number):
        raise UsageError(f"{text!r} is not a percentage; write e.g. 10% or 2.5%")
    return float(number.replace(",", ""))


def run_gates(gates: list[Gate], base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Judge every gate. An interrupted run (a partial report: SIGTERM from a CI timeout still writes
    it) fails every gate, whatever its numbers: fewer connections and a shorter run can look as good
    as or better than the baseline, and a CI job killed half-way must not go green."""
    bm, nm = report_metrics(base), report_metrics(new)
    traffic = has_traffic(base) or has_traffic(new)
    # The label in the new run's words (the baseline's when only it talked).
    kind = traffic_kind(new) or traffic_kind(base)
    results = [g.evaluate(bm, nm, traffic=traffic, kind=kind) for g in gates]
    judged_partial(results, [partial_reason(f"the {which} run", rep, "partial, not comparable")
                             for which, rep in (("new", new), ("baseline", base)) if interrupted(rep)])
    return results


# -- an interrupted run --------------------------------------------------------------------------
def interrupted(rep: dict[str, Any]) -> str | None:
    """'SIGINT' / 'SIGTERM' for a run stopped before its end (a partial report), else None."""
    value = rep.get("interrupted")
    return str(value) if value else None


def partial_reason(run: str, rep: dict[str, Any], consequence: str) -> str:
    """'the new run was interrupted (SIGTERM): partial, not comparable'."""
    return f"{run} was interrupted ({interrupted(rep)}): {consequence}"


def judged_partial(results: list[dict[str, Any]], reasons: list[str]) -> None:
    """Fail every check or gate judged on an interrupted run (`reasons`: why, one per such run),
    marked `"partial": true` with the reasons as its detail; nothing when `reasons` is empty."""
    for result in results if reasons else []:
        result["passed"] = False
        result["partial"] = True
        result["detail"] = "; ".join(reasons)
