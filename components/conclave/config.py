"""Conclave settings: the `[conclave]` section of teebus.toml and the seed's command-line options.

The web host's own options keep the spelling the seed gives them (`--sealed.state.file=<path>`,
`--filesystem.file`, `--kds.url`, `--kds.connection.timeout.seconds`); teebus's additions are
`--conclave.*`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bus.config import option

APPS = ("hello-world", "key-value", "relay")     # components/conclave/apps/
MODES = ("mock", "simulation", "debug", "release")
DEFAULT_KDS_TIMEOUT = 10.0
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEX32 = re.compile(r"[0-9A-Fa-f]{64}")


@dataclass(frozen=True)
class ConclaveConfig:
    app: str = field(default="hello-world", metadata=option(
        "--conclave.app", f"the enclave application this host serves: {', '.join(APPS)} (default hello-world)",
        metavar="APP"))
    enclave: str = field(default="", metadata=option(
        "--conclave.enclave", "the enclave's name on the bus (default: the application's name)", metavar="NAME"))
    mode: str = field(default="mock", metadata=option(
        "--conclave.mode", "mock, simulation, debug or release (no SGX here: every mode is attested by the "
        "mock attestation; the mode decides what errors say and what the sealed state accepts)", metavar="MODE"))
    code_signer: str = field(default="0" * 64, metadata=option(
        "--conclave.code-signer", "mrsigner, 64 hex digits (default zeros, as Conclave's mock)", metavar="HEX"))
    product_id: int = field(default=1, metadata=option("--conclave.product-id", "0-65535 (default 1)", metavar="N"))
    revocation_level: int = field(default=0, metadata=option(
        "--conclave.revocation-level", "0-65534 (default 0)", metavar="N"))
    sealed_state_file: str = field(default="", metadata=option(
        "--sealed.state.file", "where the enclave seals its state: its key, sequence numbers and persistent "
        "map (default <data-dir>/conclave/<enclave>/sealed.state)", metavar="PATH"))
    filesystem_file: str = field(default="", metadata=option(
        "--filesystem.file", "the enclave's encrypted file store (none if not given)", metavar="PATH"))
    kds_url: str = field(default="", metadata=option(
        "--kds.url", "key derivation service: the sealing key comes from it instead of this host", metavar="URL"))
    kds_connection_timeout_seconds: float | None = field(default=None, metadata=option(
        "--kds.connection.timeout.seconds", f"KDS timeout (default {DEFAULT_KDS_TIMEOUT:g}; needs --kds.url)",
        metavar="N"))
    max_mail_bytes: int = 1024 * 1024            # a delivered or posted mail
    max_posted_per_mail: int = 1000             # mails an application may post while handling one
    mailbox_depth: int = 1000                   # queued mails per routing hint; more is refused
    mailbox_age_seconds: float = 7 * 86_400     # queued mail older than this expires
    mailbox_bytes: int = 1024 ** 3              # all queued mail of the deployment
    long_poll_max_seconds: float = 30.0         # the longest wait a poller may ask for
    max_senders: int = 100_000                  # (sender key, topic) pairs the enclave tracks
    max_state_bytes: int = 16 * 1024 * 1024     # the sealed state (persistent map included)
    deliver_timeout_seconds: float = 30.0       # an application's handling of one mail

    def __post_init__(self) -> None:
        if self.app not in APPS:
            raise ValueError(f"--conclave.app must be one of {', '.join(APPS)}, not {self.app!r}")
        if self.enclave and not _NAME.fullmatch(self.enclave):
            raise ValueError("--conclave.enclave must be 1-64 letters, digits, - or _")
        if self.mode not in MODES:
            raise ValueError(f"--conclave.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not _HEX32.fullmatch(self.code_signer):
            raise ValueError("--conclave.code-signer must be 64 hex digits (a SHA-256)")
        if not 0 <= self.product_id <= 65535:
            raise ValueError(f"--conclave.product-id must be 0 to 65535, not {self.product_id}")
        if not 0 <= self.revocation_level <= 65534:
            raise ValueError(f"--conclave.revocation-level must be 0 to 65534, not {self.revocation_level}")
        if self.kds_connection_timeout_seconds is not None:
            if not self.kds_url:
                raise ValueError("--kds.connection.timeout.seconds needs --kds.url (there is no KDS to time out)")
            if not 0 < self.kds_connection_timeout_seconds <= 3600:
                raise ValueError("--kds.connection.timeout.seconds must be above 0 and at most 3600")
        if self.kds_url and not re.match(r"https?://[^/\s]+", self.kds_url):
            raise ValueError(f"--kds.url must be an http:// or https:// URL, not {self.kds_url!r}")
        for name, low, high in (("max_mail_bytes", 166, 64 * 1024 ** 2), ("max_posted_per_mail", 1, 100_000),
                                ("mailbox_depth", 1, 1_000_000), ("mailbox_bytes", 1024 ** 2, 1024 ** 4),
                                ("max_senders", 1, 10_000_000), ("max_state_bytes", 1024, 1024 ** 3)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be {low} to {high}, not {getattr(self, name)}")
        for name in ("mailbox_age_seconds", "long_poll_max_seconds", "deliver_timeout_seconds"):
            if not 0 < getattr(self, name) <= 365 * 86_400:
                raise ValueError(f"{name} must be above 0 and at most a year, not {getattr(self, name)}")

    @property
    def enclave_name(self) -> str:
        return self.enclave or self.app

    @property
    def kds_timeout(self) -> float:
        return self.kds_connection_timeout_seconds or DEFAULT_KDS_TIMEOUT
