"""The staff directory: who works the deals, where their morning is, and what each may see on the web board.

One YAML file (`SOPFLOW_STAFF_FILE`, default `<home>/staff.yaml`), kept by `sopflow staff …` and readable by hand:

    people:
      - email: rep@example.com
        timezone: America/New_York      # their morning digest comes at their local morning
        holidays: {country: US}         # and only on their working days
        digest: true                    # false: opted out of the morning digest
        limits: {roles: [rep], owners: ["rep:owner-17"]}   # absent: sees and acts on every deal
        tokens: [<sha256 hex>]          # web board access tokens, hashed: the file never holds one

Staff are matched by email address, case-insensitively. The file holds staff addresses only, never a client's, and
nothing in it reaches a workflow id, a search attribute or a log line.

Access tokens are 32 random bytes (`new_token`): a fast hash (SHA-256) is enough at rest, because a token cannot be
guessed from its hash by trying likely passwords the way a person's password could.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sopflow import zones
from sopflow.business_calendar import check_holidays

TOKEN_PREFIX = "sft_"
DEFAULT_MORNING_HOUR = 7


class StaffFileError(ValueError):
    """The staff file cannot be read or does not validate: one line naming the file and the problem."""


class Limits(BaseModel):
    """What a limited person sees: deals whose owner role is one of `roles`, or whose owner id (`rep:owner-17`) is
    one of `owners`, or where their address is the contact of one of `roles`."""

    model_config = ConfigDict(extra="forbid")

    roles: list[str] = []
    owners: list[str] = []


class Holidays(BaseModel):
    model_config = ConfigDict(extra="forbid")

    country: str
    subdivision: str | None = None


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str
    timezone: str = "UTC"
    holidays: Holidays | None = None
    # The local hour the morning digest is sent at.
    morning_hour: int = Field(default=DEFAULT_MORNING_HOUR, ge=0, le=23)
    digest: bool = True
    limits: Limits | None = None
    tokens: list[str] = []

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip().lower()
        local, at, domain = value.partition("@")
        if not (local and at and "." in domain) or any(c.isspace() for c in value) or len(value) > 254:
            raise ValueError("must be an email address, e.g. rep@example.com")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if not zones.is_known(value):
            raise ValueError(zones.unknown_zone_message(value))
        return value

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: Holidays | None) -> Holidays | None:
        if value is not None and (problem := check_holidays(value.country, value.subdivision)):
            raise ValueError(problem)
        return value

    def may_see(self, owner: str | None, contact_roles: set[str]) -> bool:
        """Whether this person may see (and act on) a deal with this owner (`rep:owner-17` or `rep`) and with the
        roles whose contact address is this person's."""
        if self.limits is None:
            return True
        role = (owner or "").split(":", 1)[0]
        if owner and (owner in self.limits.owners or role in self.limits.roles):
            return True
        return bool(contact_roles & set(self.limits.roles))


class Staff(BaseModel):
    model_config = ConfigDict(extra="forbid")

    people: list[Person] = []

    def find(self, email: str) -> Person | None:
        wanted = email.strip().lower()
        return next((p for p in self.people if p.email == wanted), None)

    def by_token(self, token: str) -> Person | None:
        """The person holding this access token, compared in constant time against every stored hash."""
        digest = token_hash(token)
        found = None
        for person in self.people:
            for stored in person.tokens:
                if hmac.compare_digest(stored, digest):
                    found = person
        return found


def first_error(exc: ValidationError) -> str:
    """A validation error as one line: where (`people.0.timezone`) and what, as the file and the CLI report it."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def new_token() -> str:
    """A fresh access token, shown once to its holder; only `token_hash(token)` is stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def load_staff(path: Path) -> Staff:
    """The directory in `path`; an absent file is an empty directory (a fresh install has no staff yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Staff()
    except OSError as exc:
        raise StaffFileError(f"cannot read the staff file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
        return Staff.model_validate(data)
    except yaml.YAMLError as exc:
        raise StaffFileError(f"the staff file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        raise StaffFileError(f"the staff file {path}: {first_error(exc)}") from None


def save_staff(path: Path, staff: Staff) -> None:
    """Write the directory atomically (a reader never sees half a file), readable by its owner only: it holds
    token hashes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    data = staff.model_dump(exclude_defaults=True)
    temporary.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    temporary.chmod(0o600)
    temporary.replace(path)
