"""The intake mapping's conversions and per-playbook property maps: HubSpot sends every value as text (epoch
milliseconds, internal enumeration values, `;`-joined checkboxes), and one HubSpot property may feed different
fields in different playbooks. Pure: no Temporal, no HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from sopflow.config import PROJECT_ROOT
from sopflow.fields import validate_values
from sopflow.intake_config import IntakeConfigError, PropertyMap, load_intake_config, parse_intake_config
from sopflow.playbook_checks import load_playbook

SHIPPED = PROJECT_ROOT / "playbooks" / "intake" / "mapping.yaml"


def config(**hubspot: Any) -> Any:
    return parse_intake_config({"default_playbook": "safe_balance", "hubspot": hubspot})


def test_an_enumeration_becomes_the_playbooks_option_and_an_unlisted_value_passes_for_the_field_to_refuse():
    status = PropertyMap(field="contract_status", type="enumeration", values={"proposal_signed": "Proposal signed"})
    assert status.convert("proposal_signed") == "Proposal signed"
    assert status.convert(" proposal_signed ") == "Proposal signed"
    assert status.convert("lost_in_the_mail") == "lost_in_the_mail"
    assert status.convert("") == "" and status.convert(None) is None  # a cleared property clears the field


def test_multiple_checkboxes_split_on_semicolons_into_a_list_of_options():
    products = PropertyMap(field="hp_products", type="multiple_checkboxes", values={"rcm": "RCM", "it": "IT Services"})
    assert products.convert("rcm;it") == ["RCM", "IT Services"]
    assert products.convert("rcm; ;new_line;") == ["RCM", "new_line"]
    assert products.convert("") == []


def test_yaml_booleans_and_numbers_in_values_are_read_as_the_text_hubspot_sends():
    mapped = config(properties={"p": {"field": "f", "type": "enumeration", "values": {True: "Yes", 12: "Twelve"}}})
    assert mapped.hubspot.properties["p"].values == {"true": "Yes", "12": "Twelve"}


def test_values_on_a_property_that_is_not_an_enumeration_are_refused_with_their_path():
    with pytest.raises(IntakeConfigError) as refused:
        config(properties={"p": {"field": "f", "type": "date", "values": {"a": "A"}}})
    assert "hubspot.properties.p" in str(refused.value) and "enumerations" in str(refused.value)


def test_a_playbooks_own_map_replaces_the_shared_one_for_its_deals_only():
    mapped = config(
        properties={"rep_email": "rep_email", "hubspot_owner_id": "rep_id"},
        playbooks={"health_prime_sales": {"properties": {"rep_email": "sales_rep_email", "hp_product": "hp_products"}}},
    )
    hubspot = mapped.hubspot
    assert hubspot.properties_for("health_prime_sales")["rep_email"].field == "sales_rep_email"
    assert "hubspot_owner_id" not in hubspot.properties_for("health_prime_sales")
    assert hubspot.properties_for("safe_balance")["rep_email"].field == "rep_email"
    assert hubspot.properties_for(None) == hubspot.properties
    assert hubspot.maps("hp_product") and hubspot.maps("hubspot_owner_id") and not hubspot.maps("dealname")
    assert "health_prime_sales" in mapped.playbooks()


def test_a_property_one_playbook_maps_cannot_also_raise_events():
    with pytest.raises(IntakeConfigError, match="dealstage"):
        config(playbooks={"p": {"properties": {"dealstage": "stage"}}}, events={"dealstage": {"closedwon": "won"}})


def test_the_shipped_mapping_runs_health_primes_pipelines_and_feeds_only_fields_and_options_its_playbook_has():
    shipped = load_intake_config(SHIPPED)
    pipelines = {pid: name for pid, name in shipped.pipelines.items() if name == "health_prime_sales"}
    assert len(pipelines) == 3 and shipped.hubspot.wait_for_pipeline
    playbook = load_playbook(PROJECT_ROOT / "playbooks" / "health_prime_sales.yaml")
    properties = shipped.hubspot.properties_for("health_prime_sales")
    assert {properties["pipeline"].convert(pid) for pid in pipelines} == {"New Business", "Expansion", "Upsell"}
    for prop, mapping in properties.items():
        spec = playbook.deal.get(mapping.field)
        assert spec is not None, f"{prop} feeds {mapping.field}, which health_prime_sales does not have"
        for raw in mapping.values:
            converted = mapping.convert(raw)
            validate_values(playbook.deal, {mapping.field: converted}, partial=True)  # raises if not an option
    # Every deal field a gate, a transition's condition or a close check reads comes from HubSpot.
    conditions = [check.condition for stage in playbook.stages for check in stage.gate.checks + stage.close_checks]
    conditions += [t.when for stage in playbook.stages for t in stage.transitions if t.when is not None]
    read = {ref.removeprefix("deal.") for condition in conditions for ref in condition.refs()}
    assert len(read) > 40 and read <= {mapping.field for mapping in properties.values()}
