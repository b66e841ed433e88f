"""Hostile values at the boundary: refused by field, cheaply, before anything converts them."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from marshmallow import fields

from services.common.errors import ValidationError
from services.common.ids import check_id
from services.common.schemas import MAX_LIST_ITEMS, StrictSchema, Text, load
from services.registry import schemas as registry_schemas
from services.tasks import domain as tasks_domain
from services.tasks import schemas as tasks_schemas

ORG = "org_" + "a" * 28


class Sample(StrictSchema):
    n = fields.Integer(load_default=0)
    items = fields.List(fields.Raw(), load_default=list)
    name = Text(load_default="")
    notes = Text(load_default="", multiline=True, max_length=1000)


def field_errors(data: Any, schema: Any = None) -> dict[str, Any]:
    with pytest.raises(ValidationError) as refused:
        load(schema or Sample(), data)
    return refused.value.args[1] if len(refused.value.args) > 1 else refused.value.errors


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1, 2**200,
                                    Decimal("1e999999"), Decimal("-1e40"), Decimal("NaN"),
                                    Decimal("Infinity"), float("inf"), float("nan")])
def test_numbers_beyond_64_bits_or_not_finite_are_refused_by_field(number: Any) -> None:
    assert "n" in str(field_errors({"n": number}))


def test_numbers_within_64_bits_pass() -> None:
    assert load(Sample(), {"n": 2**63 - 1})["n"] == 2**63 - 1
    assert load(Sample(), {"n": Decimal("12")})["n"] == 12


def test_a_lone_surrogate_is_refused_by_field() -> None:
    assert "name" in str(field_errors({"name": "ab\ud800"}))


def test_a_list_of_a_million_rows_is_refused_before_it_is_walked() -> None:
    assert "items" in str(field_errors({"items": [{}] * (MAX_LIST_ITEMS + 1)}))


@pytest.mark.parametrize("bad", ["a\rb", "a\x85b", "a\u2028b", "a\u2029b", "\ufeffadmin",
                                 "\u202eadmin\u202c", "a\u202ab", "a\x1bb", "a\nb", "a\tb"])
def test_one_line_text_refuses_controls_separators_boms_and_bidi_overrides(bad: str) -> None:
    assert "name" in str(field_errors({"name": bad}))


@pytest.mark.parametrize("bad", ["a\u2028b", "\u202eadmin", "a\x85b", "a\x00b"])
def test_multi_line_text_refuses_them_too(bad: str) -> None:
    assert "notes" in str(field_errors({"notes": bad}))


def test_multi_line_text_keeps_lines_and_normalises_carriage_returns() -> None:
    assert load(Sample(), {"notes": "one\r\ntwo\rthree\nfour"})["notes"] == \
        "one\ntwo\nthree\nfour"


@pytest.mark.parametrize("text", ["جمعية سند", "Rana \u200fرنا\u200f", "مرحبا \u2067Sanad\u2069",
                                  "Élodie Dupont-Haddad", "Beyrouth — بيروت"])
def test_arabic_french_and_mixed_direction_text_is_kept(text: str) -> None:
    assert load(Sample(), {"name": text})["name"] == text


def test_ids_do_not_match_with_a_trailing_newline() -> None:
    with pytest.raises(ValidationError):
        check_id(ORG + "\n", "org")
    assert check_id(ORG, "org") == ORG


@pytest.mark.parametrize("validator, good", [
    (registry_schemas.ID["validate"], ORG),
    (registry_schemas.PHONE, "+9611234567"),
    (tasks_schemas.SKILL_ID, "sk_first_aid"),
    (tasks_schemas.ID, ORG),
])
def test_patterns_are_full_matches(validator: Any, good: str) -> None:
    validator(good)
    with pytest.raises(Exception):  # noqa: B017,PT011 - marshmallow's ValidationError
        validator(good + "\n")


def test_availability_times_and_member_ids_refuse_a_trailing_newline() -> None:
    assert registry_schemas._HHMM.match("09:30")
    assert not registry_schemas._HHMM.match("09:30\n")
    assert not registry_schemas._HHMM.match("24:00\n")
    member = registry_schemas.MemberSchema()
    assert "user_id" in str(field_errors({"user_id": "u_rana\n"}, member))


def test_a_recurrence_rule_with_a_newline_or_spaces_is_refused() -> None:
    for rule in ("FREQ=WEEKLY;COUNT=4\n", "FREQ=WEEKLY; COUNT=4"):
        with pytest.raises(ValidationError):
            tasks_domain._check_rrule(rule)
    tasks_domain._check_rrule("FREQ=WEEKLY;BYDAY=MO,WE;COUNT=4")
