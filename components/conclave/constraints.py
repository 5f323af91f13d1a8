"""Conclave's EnclaveConstraint: the little text language a client uses to say which enclaves it accepts.

`C:<hash> S:<hash> PROD:<n> REVOKE:<n> SEC:INSECURE|STALE|SECURE EXPIRE:<period>`, space separated, read
and checked exactly as `com.r3.conclave.common.EnclaveConstraint` (its last version) does:

* tokens are split on single spaces (empty tokens from repeated spaces are skipped), each must be `KEY:VALUE`
  with exactly one colon; keys are case-sensitive; C: and S: may repeat, the others may appear once;
* C:/S: values are SHA-256 (64 hex digits) or SHA-512 (128) hashes, either case;
* PROD: 0..65535, REVOKE: ≥ 0, SEC: defaults to STALE, EXPIRE: a java.time.Period (years, months, weeks,
  days — no time part, so `PT1H` is refused, as Conclave refuses it);
* at least one C: or S:; S: needs PROD: and PROD: needs S: (Conclave's checkCriteriaValid);
* check: (code hash in C or signer in S) and product id == PROD and revocation level ≥ REVOKE and security
  ≥ SEC — except that SEC:INSECURE asks for an INSECURE enclave exactly (Conclave's CON-806: a client set up
  for development must not talk to a production enclave) — and the attestation is younger than EXPIRE.

Messages Conclave writes itself are kept word for word (Conclave's C: one lacks its closing parenthesis;
ours has it); where Conclave's says nothing about the enclave's own value, ours adds it. Where Conclave
surfaces a Java library error instead (a bad number, SEC value or period), ours names the term and value.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Protocol

from components.conclave.eii import AttestationTime, SecuritySummary

KEYS = ("C", "S", "PROD", "REVOKE", "SEC", "EXPIRE")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# java.time.Period.parse's pattern: ASCII digits, case-insensitive letters, an optional sign in front of
# the whole and of each number, weeks folded into days.
_PERIOD = re.compile(
    r"([-+]?)P(?:([-+]?[0-9]{1,40})Y)?(?:([-+]?[0-9]{1,40})M)?(?:([-+]?[0-9]{1,40})W)?(?:([-+]?[0-9]{1,40})D)?",
    re.IGNORECASE | re.ASCII,
)
_INTEGER = re.compile(r"[+-]?\d{1,40}")  # Integer.parseInt accepts any Unicode decimal digits, as does \d
_HEX = re.compile(r"[0-9A-Fa-f]*", re.ASCII)


class ConstraintParseError(ValueError):
    """Not a valid constraint: bad text (IllegalArgumentException in Conclave) or an incomplete set of
    criteria (IllegalStateException there). A configuration error, not a verdict on an enclave."""


class ConstraintError(ValueError):
    """The enclave does not satisfy the constraint (Conclave's InvalidEnclaveException); `term` names the
    criterion that failed: C, S, C/S, PROD, REVOKE, SEC or EXPIRE."""

    def __init__(self, term: str, message: str) -> None:
        super().__init__(message)
        self.term = term


class AttestedEnclave(Protocol):
    """What a constraint looks at; EnclaveInstanceInfo provides it."""

    @property
    def code_hash(self) -> bytes: ...

    @property
    def code_signing_key_hash(self) -> bytes: ...

    @property
    def product_id(self) -> int: ...

    @property
    def revocation_level(self) -> int: ...

    @property
    def security_summary(self) -> SecuritySummary: ...

    @property
    def timestamp(self) -> AttestationTime | None: ...


# --- java.time.Period -----------------------------------------------------------------------------

def _int32(value: int, text: str) -> int:
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise ValueError(f"Text cannot be parsed to a Period: {text} (a number does not fit 32 bits)")
    return value


@dataclass(frozen=True)
class Period:
    """A date-based amount of time, as java.time.Period: what EXPIRE: takes."""

    years: int = 0
    months: int = 0
    days: int = 0

    @classmethod
    def parse(cls, text: str) -> Period:
        """`PnYnMnWnD` (any part optional but not all, weeks become days); ValueError otherwise."""
        match = _PERIOD.fullmatch(text)
        if match is None or all(group is None for group in match.groups()[1:]):
            raise ValueError(f"Text cannot be parsed to a Period: {text} (a java.time.Period has years, months, "
                             f"weeks and days only, no time part: e.g. P6M, P30D, P1Y2M3W4D)")
        sign = -1 if match.group(1) == "-" else 1
        years, months, weeks, days = (_int32(int(g), text) if g else 0 for g in match.groups()[1:])
        days = _int32(days + _int32(weeks * 7, text), text)
        return cls(*(_int32(sign * n, text) for n in (years, months, days)))

    def __str__(self) -> str:
        """Period.toString: `P0D` for zero, else the non-zero parts, e.g. P2M25D for P2M3W4D."""
        if not (self.years or self.months or self.days):
            return "P0D"
        parts = ((self.years, "Y"), (self.months, "M"), (self.days, "D"))
        return "P" + "".join(f"{n}{unit}" for n, unit in parts if n)

    def subtract_from(self, moment: datetime) -> datetime:
        """moment − period on the wall clock, as ZonedDateTime.minus(Period): months (years folded in)
        first with the day clamped to the month's length, then days. OverflowError past years 1..9999."""
        total_months = self.years * 12 + self.months
        if total_months:
            moment = _minus_months(moment, total_months)
        return moment - timedelta(days=self.days) if self.days else moment


def _minus_months(moment: datetime, months: int) -> datetime:
    year, month0 = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    if not 1 <= year <= 9999:
        raise OverflowError(f"year {year} is out of range")
    day = min(moment.day, calendar.monthrange(year, month0 + 1)[1])
    return moment.replace(year=year, month=month0 + 1, day=day)


# --- parsing helpers ---------------------------------------------------------------------------------

def _parse_hash(key: str, value: str) -> bytes:
    """SecureHash.parse: the length picks SHA-256 or SHA-512, then the digits must be hex."""
    if len(value) not in (64, 128):
        raise ConstraintParseError(f"{key}:{value} is not a valid value: "
                                   f"Provided string is neither a SHA-256 or a SHA-512 string: {value}")
    if not _HEX.fullmatch(value):
        raise ConstraintParseError(f"{key}:{value} is not a valid value: "
                                   f"contains illegal character for hexBinary: {value.upper()}")
    return bytes.fromhex(value)


def _parse_int(key: str, value: str) -> int:
    """Kotlin's String.toInt(): optional sign, decimal digits, 32-bit."""
    if not _INTEGER.fullmatch(value) or not _INT32_MIN <= int(value) <= _INT32_MAX:
        raise ConstraintParseError(f'{key}:{value} is not a valid value: "{value}" is not a 32-bit integer')
    return int(value)


def _parse_security(value: str) -> SecuritySummary:
    """EnclaveSecurityInfo.Summary.valueOf: exact, upper-case names."""
    if value not in SecuritySummary.__members__:
        raise ConstraintParseError(f"SEC:{value} is not a valid value: use INSECURE, STALE or SECURE")
    return SecuritySummary[value]


def _parse_period(value: str) -> Period:
    try:
        return Period.parse(value)
    except ValueError as exc:
        raise ConstraintParseError(f"EXPIRE:{value} is not a valid value: {exc}") from None


def _check_product_id(value: int | None) -> None:
    if value is not None and value < 0:
        raise ConstraintParseError("Product ID is negative.")
    if value is not None and value >= 65536:
        raise ConstraintParseError("Product ID is not a 16-bit number.")


def _check_min_revocation_level(value: int | None) -> None:
    if value is not None and value < 0:
        raise ConstraintParseError("Min revocation level is negative.")


def _tokens(text: str) -> dict[str, list[str]]:
    """KEY:VALUE tokens grouped by key in first-seen order (Kotlin's groupBy)."""
    grouped: dict[str, list[str]] = {}
    for token in (t for t in text.split(" ") if t):
        parts = token.split(":")
        if len(parts) != 2:
            raise ConstraintParseError(f"Invalid token: {token}")
        grouped.setdefault(parts[0], []).append(parts[1])
    unknown = [key for key in grouped if key not in KEYS]
    if unknown:
        raise ConstraintParseError(f"Unknown keys [{', '.join(unknown)}]")
    return grouped


def _single(grouped: dict[str, list[str]], key: str) -> str | None:
    values = grouped.get(key)
    if values is None:
        return None
    if len(values) != 1:
        raise ConstraintParseError(f"More than one {key} defined")
    return values[0]


def _hashes(values: Iterable[bytes]) -> tuple[bytes, ...]:
    """A set of hashes as a sorted tuple, so equal constraints compare equal and print alike."""
    hashes = {bytes(v) for v in values}
    for h in hashes:
        if len(h) not in (32, 64):
            raise ConstraintParseError(f"a hash is 32 (SHA-256) or 64 (SHA-512) bytes, got {len(h)}")
    return tuple(sorted(hashes))


def _hex(value: bytes) -> str:
    return value.hex().upper()  # SecureHash.toString


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)


# --- the constraint --------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnclaveConstraint:
    """(code hash in C or signer in S) and PROD and REVOKE and SEC and EXPIRE; see the module docstring."""

    code_hashes: tuple[bytes, ...] = ()
    signers: tuple[bytes, ...] = ()
    product_id: int | None = None
    min_revocation_level: int | None = None
    min_security: SecuritySummary = SecuritySummary.STALE
    max_age: Period | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code_hashes", _hashes(self.code_hashes))
        object.__setattr__(self, "signers", _hashes(self.signers))
        _check_product_id(self.product_id)
        _check_min_revocation_level(self.min_revocation_level)
        object.__setattr__(self, "min_security", SecuritySummary(self.min_security))
        if self.max_age is not None and not isinstance(self.max_age, Period):
            raise ConstraintParseError(f"max_age must be a Period, not {type(self.max_age).__name__}")

    @classmethod
    def parse(cls, text: str, check_validity: bool = True) -> EnclaveConstraint:
        """Conclave's EnclaveConstraint.parse, same order of checks and same refusals."""
        grouped = _tokens(text)
        code_hashes = [_parse_hash("C", v) for v in grouped.get("C", [])]
        signers = [_parse_hash("S", v) for v in grouped.get("S", [])]
        product_id = _parse_optional(grouped, "PROD", _parse_int)
        _check_product_id(product_id)
        min_revocation_level = _parse_optional(grouped, "REVOKE", _parse_int)
        _check_min_revocation_level(min_revocation_level)
        security = _single(grouped, "SEC")
        expire = _single(grouped, "EXPIRE")
        constraint = cls(
            code_hashes=tuple(code_hashes),
            signers=tuple(signers),
            product_id=product_id,
            min_revocation_level=min_revocation_level,
            min_security=SecuritySummary.STALE if security is None else _parse_security(security),
            max_age=None if expire is None else _parse_period(expire),
        )
        if check_validity:
            constraint.validate()
        return constraint

    def validate(self) -> None:
        """Conclave's checkCriteriaValid: the criteria make a usable constraint."""
        if not self.code_hashes and not self.signers:
            raise ConstraintParseError("Either a code hash or a code signer must be provided.")
        if self.product_id is not None and not self.signers:
            raise ConstraintParseError("A code signer must be provided with a product ID.")
        if self.signers and self.product_id is None:
            raise ConstraintParseError("A product ID must be provided with a code signer.")

    def check(self, eii: AttestedEnclave, now: datetime | None = None) -> None:
        """Raise ConstraintError naming the first failed criterion; `now` (default: the current UTC time,
        naive means UTC) is what EXPIRE counts back from."""
        self.validate()
        self._check_identity(eii)
        if self.product_id is not None and eii.product_id != self.product_id:
            raise ConstraintError("PROD", f"Enclave has a product ID of {eii.product_id} which does not match "
                                          f"the criteria of {self.product_id}.")
        if self.min_revocation_level is not None and eii.revocation_level < self.min_revocation_level:
            raise ConstraintError("REVOKE", f"Enclave has a revocation level of {eii.revocation_level} which is "
                                            f"lower than the required level of {self.min_revocation_level}.")
        self._check_security(eii.security_summary)
        if self.max_age is not None:
            self._check_age(eii.timestamp, _utc(now))

    def _check_identity(self, eii: AttestedEnclave) -> None:
        code, signer = eii.code_hash, eii.code_signing_key_hash
        if self.code_hashes and not self.signers:
            if code not in self.code_hashes:
                raise ConstraintError("C", "Enclave code hash does not match any of the acceptable code hashes. "
                                           f"(measurement hash {_hex(code)} vs acceptable "
                                           f"{', '.join(map(_hex, self.code_hashes))})")
        elif self.signers and not self.code_hashes:
            if signer not in self.signers:
                raise ConstraintError("S", "Enclave code signer does not match any of the acceptable code signers. "
                                           f"(key hash {_hex(signer)} vs acceptable "
                                           f"{', '.join(map(_hex, self.signers))})")
        elif code not in self.code_hashes and signer not in self.signers:
            raise ConstraintError("C/S", "Enclave does not match any of the acceptable code hashes or code signers. "
                                         f"(measurement hash {_hex(code)}, key hash {_hex(signer)})")

    def _check_security(self, summary: SecuritySummary) -> None:
        wanted = self.min_security
        if wanted == SecuritySummary.INSECURE and summary != wanted:  # CON-806: exactly INSECURE
            raise ConstraintError("SEC", f"Enclave has a security level of {summary.name} which does not match "
                                         f"the required level of {wanted.name}.")
        if summary < wanted:
            raise ConstraintError("SEC", f"Enclave has a security level of {summary.name} which is lower than "
                                         f"the required level of {wanted.name}.")

    def _check_age(self, stamp: AttestationTime | None, now: datetime) -> None:
        period = self.max_age
        try:
            earliest = AttestationTime.from_datetime(period.subtract_from(now))
        except OverflowError:
            raise ConstraintError("EXPIRE", f"EXPIRE:{period} counted back from {now.isoformat()} falls outside "
                                            "the calendar.") from None
        if stamp is None:
            raise ConstraintError("EXPIRE", f"Enclave attestation data has no verified time, so its age cannot "
                                            f"be checked against {period}.")
        if not earliest < stamp:
            raise ConstraintError("EXPIRE", f"Enclave attestation data is out of date with an age that exceeds "
                                            f"{period}. (attested at {stamp}, accepted only after {earliest})")

    def __str__(self) -> str:
        """The canonical text: C:, S:, PROD:, REVOKE:, EXPIRE:, then always SEC: (Conclave's toString)."""
        tokens = [f"C:{_hex(h)}" for h in self.code_hashes] + [f"S:{_hex(h)}" for h in self.signers]
        if self.product_id is not None:
            tokens.append(f"PROD:{self.product_id}")
        if self.min_revocation_level is not None:
            tokens.append(f"REVOKE:{self.min_revocation_level}")
        if self.max_age is not None:
            tokens.append(f"EXPIRE:{self.max_age}")
        tokens.append(f"SEC:{self.min_security.name}")
        return " ".join(tokens)


def _parse_optional(grouped: dict[str, list[str]], key: str, parse: Callable[[str, str], int]) -> int | None:
    value = _single(grouped, key)
    return None if value is None else parse(key, value)
