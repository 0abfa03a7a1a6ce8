"""What the webhook intake does with CRM and e-signature events: `playbooks/intake/mapping.yaml`.

The file is chosen with SOPFLOW_INTAKE_CONFIG.

Kept apart from the playbooks because it describes one company's CRM (pipeline ids, custom property names), not
an SOP: the same playbook serves several pipelines, and a CRM admin renaming a property edits one small file.

    default_playbook: safe_balance          # a deal in a pipeline not listed below
    pipelines: {default: safe_balance}      # HubSpot pipeline id -> playbook
    hubspot:
      pipeline_property: pipeline           # the deal property holding the pipeline id
      defaults: {}                          # deal fields every new deal starts with
      wait_for_pipeline: false              # true: a deal starts only once its pipeline is known
      properties:                           # HubSpot deal property -> deal field
        rep_email: rep_email
        launch_date: {field: launch_date, type: date}   # HubSpot sends dates as epoch milliseconds
      playbooks:                            # a playbook's own map, instead of `properties`, for its deals
        health_prime_sales:
          properties:
            rep_email: sales_rep_email
            hp_product: {field: hp_products, type: multiple_checkboxes, values: {rcm: RCM}}   # "rcm;coding"
            contract_status: {field: contract_status, type: enumeration, values: {proposal_signed: Proposal signed}}
      events:                               # property -> value -> lifecycle event (a signal)
        dealstage: {closedwon: deal_won}
    docusign:
      deal_field: deal_id                   # the envelope's text custom field naming the deal
      events: {envelope-completed: contract_signed, ...}
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sopflow.playbook import format_loc

_IDENT = r"^[a-z][a-z0-9_]*$"
_PLAYBOOK = r"^[A-Za-z0-9_.-]+$"
PlaybookName = Annotated[str, Field(pattern=_PLAYBOOK, max_length=200)]


class IntakeConfigError(Exception):
    """Every problem in the intake file, each with its path, like a playbook's; never the file's secrets (none)."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PropertyMap(_Model):
    """A CRM property copied into a deal field, converted from HubSpot's wire format to what the playbook reads.

    HubSpot sends every value as text: dates as epoch milliseconds (`type: date|datetime`), enumerations as their
    internal values (`type: enumeration` with `values` naming the playbook's option for each), multiple checkboxes
    as internal values joined by `;` (`type: multiple_checkboxes`: a list). Numbers and single checkboxes
    (`true`/`false`) are text the playbook's number, money and bool fields already read.
    """

    field: str = Field(pattern=_IDENT, max_length=64)
    type: Literal["text", "date", "datetime", "enumeration", "multiple_checkboxes"] = "text"
    # HubSpot internal value -> the playbook's option (enumeration and multiple_checkboxes); an unlisted value
    # passes unchanged, so the playbook refuses it by name rather than the mapping guessing.
    values: dict[str, str] = {}

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        # YAML reads `yes: Yes` or `12: x` as a bool or an int key; HubSpot sends text.
        if isinstance(value, dict):
            return {_yaml_text(k): _yaml_text(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _values_need_an_enumeration(self) -> PropertyMap:
        if self.values and self.type not in ("enumeration", "multiple_checkboxes"):
            raise ValueError(f"`values` translate enumerations; this property is of type {self.type}")
        return self

    def convert(self, raw: Any) -> Any:
        """The value the playbook's field validator gets; anything it cannot convert passes through unchanged,
        so the validator (not this mapping) names the problem."""
        if self.type == "text" or raw is None:
            return raw
        if self.type == "enumeration":
            return self.values.get(str(raw).strip(), raw)
        if self.type == "multiple_checkboxes":
            items = [item.strip() for item in str(raw).split(";") if item.strip()]
            return [self.values.get(item, item) for item in items]
        text = str(raw).strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 15:
            return raw  # already ISO text (or garbage the validator will reject with a message)
        try:
            moment = datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return raw
        return moment.date().isoformat() if self.type == "date" else moment.isoformat()


def _yaml_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def _short_form(value: Any) -> Any:
    """`rep_email: rep_email` is shorthand for `rep_email: {field: rep_email}`."""
    if isinstance(value, dict):
        return {k: {"field": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


class PlaybookProperties(_Model):
    """The properties of the deals one playbook runs, when they differ from the shared map (the same HubSpot
    property feeding another field, or another playbook's properties meaning nothing to this one)."""

    properties: dict[str, PropertyMap] = {}

    _short_form = field_validator("properties", mode="before")(_short_form)


class HubSpotIntake(_Model):
    pipeline_property: str = Field(default="pipeline", min_length=1, max_length=100)
    # Start a deal only once its pipeline is known: where pipelines run different playbooks, a deal started before
    # its pipeline arrived (HubSpot's creation event carries ids only) would run the default playbook for good.
    wait_for_pipeline: bool = False
    defaults: dict[str, Any] = {}
    properties: dict[str, PropertyMap] = {}
    # Playbook id -> its own property map, used instead of `properties` for the deals that playbook runs.
    playbooks: dict[Annotated[str, Field(pattern=_PLAYBOOK, max_length=200)], PlaybookProperties] = {}
    events: dict[str, dict[str, str]] = {}

    _short_form = field_validator("properties", mode="before")(_short_form)

    def properties_for(self, playbook: str | None) -> dict[str, PropertyMap]:
        """The property map of a playbook's deals: its own if listed under `playbooks`, else the shared one."""
        own = self.playbooks.get(playbook) if playbook is not None else None
        return own.properties if own is not None else self.properties

    def maps(self, prop: str) -> bool:
        """Whether any playbook's deals take this property (it is worth keeping until the deal starts)."""
        return prop in self.properties or any(prop in own.properties for own in self.playbooks.values())

    @field_validator("events")
    @classmethod
    def _event_names(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for prop, by_value in value.items():
            for raw, name in by_value.items():
                if not re.match(_IDENT, name):
                    raise ValueError(f"{prop}.{raw}: event {name!r} is not an identifier (a-z, 0-9, _)")
        return value

    @model_validator(mode="after")
    def _one_meaning_per_property(self) -> HubSpotIntake:
        # A property that both sets a field and raises an event would need two outcomes for one delivery.
        mapped = set(self.properties).union(*(own.properties for own in self.playbooks.values()))
        both = sorted(mapped & set(self.events))
        if both:
            raise ValueError(f"properties {', '.join(both)} are mapped both to a deal field and to events")
        return self


class DocuSignIntake(_Model):
    deal_field: str = Field(default="deal_id", min_length=1, max_length=100)
    events: dict[str, str] = {
        "envelope-completed": "contract_signed",
        "envelope-declined": "contract_declined",
        "envelope-voided": "contract_voided",
    }

    @field_validator("events")
    @classmethod
    def _event_names(cls, value: dict[str, str]) -> dict[str, str]:
        for status, name in value.items():
            if not re.match(_IDENT, name):
                raise ValueError(f"{status}: event {name!r} is not an identifier (a-z, 0-9, _)")
        return value


class IntakeConfig(_Model):
    default_playbook: PlaybookName
    pipelines: dict[str, PlaybookName] = {}
    hubspot: HubSpotIntake = HubSpotIntake()
    docusign: DocuSignIntake = DocuSignIntake()

    @field_validator("pipelines", mode="before")
    @classmethod
    def _pipeline_ids_as_text(cls, value: Any) -> Any:
        # HubSpot pipeline ids are numbers for custom pipelines; YAML reads `12345: x` as an int key.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    def playbook_for(self, pipeline: str | None) -> str:
        """The playbook a new deal in this pipeline runs; the default for an unknown or unset pipeline."""
        if pipeline is not None and pipeline in self.pipelines:
            return self.pipelines[pipeline]
        return self.default_playbook

    def playbooks(self) -> set[str]:
        return {self.default_playbook, *self.pipelines.values(), *self.hubspot.playbooks}

    def event_for(self, prop: str, value: Any) -> str | None:
        """The lifecycle event a property change raises (`dealstage` -> `closedwon` -> `deal_won`), if any."""
        by_value = self.hubspot.events.get(prop)
        if by_value is None or value is None:
            return None
        return by_value.get(str(value))


def parse_intake_config(data: Any, source: str = "<intake config>") -> IntakeConfig:
    try:
        return IntakeConfig.model_validate(data)
    except ValidationError as exc:
        errors = [
            f"{format_loc(tuple(err['loc']))}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()
        ]
        raise IntakeConfigError(source, errors) from None


def load_intake_config(path: Path) -> IntakeConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise IntakeConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise IntakeConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_intake_config(data, str(path))
