"""Traffic over held connections (issue 4): per-connection protocol state (raw TCP, HTTP/1.1 on h11,
WebSocket on wsproto), the open-model send schedule, and the config that the CLI builds once.

Rules of this package: no I/O. Everything here takes bytes and `now` as arguments and returns bytes,
counts and causes; the workers in loopfan.engine.traffic_client / traffic_server do the syscalls.
"""
