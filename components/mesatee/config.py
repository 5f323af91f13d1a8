"""MesaTEE settings: the `[mesatee]` section of teebus.toml."""

from __future__ import annotations

from dataclasses import dataclass

from components.mesatee.fns_messages import MAX_DEADLINE_SECONDS
from components.mesatee.kms_cache import DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class MesateeConfig:
    kms_opened_configs: int = DEFAULT_MAX_ENTRIES   # opened key configs the KMS keeps for repeated Gets
    tms_max_tasks_per_user: int = 10_000   # tasks one user may create (bounds List)
    tms_max_tasks: int = 100_000           # tasks altogether (the TMS's mirror holds them all)
    fns_ip: str = ""                       # the function node's address in TMS replies (default: the sites' host)
    fns_workers: int = 0                   # worker processes running functions (0: one per core)
    fns_deadline_seconds: float = 300.0    # a task running longer is stopped and Failed
    fns_max_queued: int = 64               # invocations waiting for a worker; more are refused (503)
    users_cache_entries: int = 10_000   # verified (user, token) pairs the user registry answers from memory
    tdfs_max_files_per_user: int = 1_000   # files one user may own in the TDFS (bounds List and the bucket)
    tdfs_max_files: int = 100_000          # files in the TDFS altogether (its mirror holds them all)
    tdfs_sweep_seconds: float = 600.0      # how often the TDFS looks for abandoned uploads and orphan files
    tdfs_stale_seconds: float = 3600.0     # an upload untouched this long is abandoned

    def __post_init__(self) -> None:
        if self.kms_opened_configs < 1:
            raise ValueError(f"kms_opened_configs must be at least 1, not {self.kms_opened_configs}")
        if not 1 <= self.tms_max_tasks_per_user <= self.tms_max_tasks:
            raise ValueError(f"tms_max_tasks_per_user must be between 1 and tms_max_tasks ({self.tms_max_tasks}), "
                             f"not {self.tms_max_tasks_per_user}")
        if not 0 <= self.fns_workers <= 256:
            raise ValueError(f"fns_workers must be between 0 (one per core) and 256, not {self.fns_workers}")
        if not 0 < self.fns_deadline_seconds <= MAX_DEADLINE_SECONDS:
            raise ValueError(f"fns_deadline_seconds must be above 0 and at most {MAX_DEADLINE_SECONDS:g}, "
                             f"not {self.fns_deadline_seconds}")
        if self.fns_max_queued < 1:
            raise ValueError(f"fns_max_queued must be at least 1, not {self.fns_max_queued}")
        if self.users_cache_entries < 1:
            raise ValueError(f"users_cache_entries must be at least 1, not {self.users_cache_entries}")
        if not 1 <= self.tdfs_max_files_per_user <= self.tdfs_max_files:
            raise ValueError(f"tdfs_max_files_per_user must be between 1 and tdfs_max_files "
                             f"({self.tdfs_max_files}), not {self.tdfs_max_files_per_user}")
        if self.tdfs_sweep_seconds <= 0 or self.tdfs_stale_seconds <= 0:
            raise ValueError("tdfs_sweep_seconds and tdfs_stale_seconds must be positive, not "
                             f"{self.tdfs_sweep_seconds} and {self.tdfs_stale_seconds}")
