"""Every Aurae subject, built here and nowhere else, and the shape of what travels on them.

Aurae's daemon runs per node, so every subject ends with the node's host name (a NATS token:
dots become `_`). Payloads are the protos' messages as JSON (protobuf's JSON mapping with the
proto field names, `preserving_proto_field_name`; enums by name, e.g. "STATUS_COMPLETE"; int64 as
JSON numbers), so components never import the generated code: the adapter (adapters/unix/aurae.py)
converts.

runtime (components/aurae/runtime.py)
  RUN_EXECUTABLE  Executable {"meta": {"name", "message"}, "command", "comment"}
                  -> ExecutableStatus {"meta", "proc": {"pid"}, "status", "stdout", "stderr", "exit_code"}
  RUN_CELL        Cell {"meta", "containers": [{"meta": {"name", "message"}, "image"}]}
                  -> CellStatus {"meta", "status", "container_statuses": [{"meta", "proc", "status"}]}
  OUTPUT          the output stream's subjects (internal): per pid, channels "stdout" and "stderr"
                  (LogItem JSON lines; under load one stored message holds several, one per line;
                  an `Aurae-End` header marks the end) and "proc" (the process's record: written at
                  its start, header `Aurae-Start`, and at its end, header `Aurae-End`)
observe (components/aurae/observe.py)
  STATUS          StatusRequest {"meta"} -> StatusResponse {"meta": {"name", "message"}}
  DAEMON_LOG      a feed (bus/feeds.py: a gRPC server stream on the bus) of LogItem {"channel", "line",
                  "timestamp"}
  SUBPROCESS      a feed of LogItem, opened with GetSubProcessStreamRequest {"channel_type", "process_id"}
schedule (components/aurae/schedule.py)
  ENABLE, DISABLE, DESTROY   Executable -> {"meta"}
  SHOW_ENABLED, SHOW_DISABLED  {"meta"} -> {"meta", "Executables": [Executable, ...]}
"""

SYSTEM = "aurae"
OUTPUT_STREAM = "AURAE_OUTPUT"


def host_token(host: str) -> str:
    return host.replace(".", "_")


def run_executable(host: str) -> str:
    return f"{SYSTEM}.runtime.run_executable.{host_token(host)}"


def run_cell(host: str) -> str:
    return f"{SYSTEM}.runtime.run_cell.{host_token(host)}"


def output(host: str, pid: int | str, channel: str) -> str:
    """Where a process's lines are kept: channel "stdout" or "stderr" (or "*")."""
    return f"{SYSTEM}.runtime.internal.output.{host_token(host)}.{pid}.{channel}"


def output_filter() -> str:
    return f"{SYSTEM}.runtime.internal.output.>"


def status(host: str) -> str:
    return f"{SYSTEM}.observe.status.{host_token(host)}"


def daemon_log(host: str) -> str:
    return f"{SYSTEM}.observe.daemon_log.{host_token(host)}"


def subprocess_stream(host: str) -> str:
    return f"{SYSTEM}.observe.subprocess.{host_token(host)}"


def schedule(operation: str, host: str) -> str:
    """operation: enable, disable, destroy, show_enabled, show_disabled."""
    return f"{SYSTEM}.schedule.{operation}.{host_token(host)}"
