"""Skill taxonomy: the shipped file, text normalisation and load-time validation."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.registry.taxonomy import (
    DEFAULT_PATH,
    Skill,
    Taxonomy,
    default_taxonomy,
    match_key,
    normalise_text,
)

ARABIC = re.compile(r"[\u0621-\u064A]")
SHIPPED = Taxonomy.load()


def entry(skill_id: str, en: str, **extra: Any) -> dict[str, Any]:
    return {"id": skill_id, "category": "data", "labels": {"en": en}, **extra}


# -- the shipped file ---------------------------------------------------------------------
def test_shipped_file_loads_with_enough_skills() -> None:
    assert 60 <= len(SHIPPED) <= 80
    assert default_taxonomy() is default_taxonomy()
    assert default_taxonomy().version == SHIPPED.version


def test_every_skill_has_arabic_english_and_french_labels() -> None:
    for skill in SHIPPED:
        assert {"ar", "en", "fr"} <= set(skill.labels), skill.id
        assert ARABIC.search(skill.labels["ar"]), skill.id
        assert not ARABIC.search(skill.labels["en"] + skill.labels["fr"]), skill.id


@pytest.mark.parametrize("skill", list(SHIPPED), ids=lambda s: s.id)
def test_every_label_and_synonym_resolves_to_its_own_skill(skill: Skill) -> None:
    assert SHIPPED.resolve(skill.id) is skill
    for lang, text in skill.terms():
        assert SHIPPED.resolve(text) is skill, (lang, text)
        assert SHIPPED.normalise(text)["skill_id"] == skill.id


def test_related_ids_exist() -> None:
    for skill in SHIPPED:
        assert all(other in SHIPPED for other in skill.related), skill.id


# -- normalisation ------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "skill_id"), [
    ("DATA ANALYSIS", "sk_data_analysis"),
    ("  data-analysis ", "sk_data_analysis"),
    ("data_analysis", "sk_data_analysis"),
    ("analyse de données", "sk_data_analysis"),
    ("Analyse de donnees", "sk_data_analysis"),
    ("ANALYSE DE DONNÉES", "sk_data_analysis"),
    ("تحليل البيانات", "sk_data_analysis"),
    ("تَحْلِيل البيانات", "sk_data_analysis"),
    ("تحليل بيانات", "sk_data_analysis"),
    ("تحليـــل البيانات", "sk_data_analysis"),  # tatweel
    ("الأمن السيبراني", "sk_cybersecurity"),
    ("الامن السيبراني", "sk_cybersecurity"),
    ("ادخال البيانات", "sk_data_entry"),
    ("الترجمه الفوريه", "sk_interpreting"),
    ("سهوله الوصول الى المواقع", "sk_accessibility"),
    ("PSC١", "sk_first_aid"),  # Arabic-Indic digit
    ("psc۱", "sk_first_aid"),  # Eastern Arabic-Indic digit
    ("cours d’anglais", "sk_english_teaching"),  # typographic apostrophe, elided article
    ("\u200fإكسل\u200e", "sk_spreadsheets"),  # bidi marks from pasted text
])
def test_variants_resolve_to_the_same_skill(text: str, skill_id: str) -> None:
    assert SHIPPED.normalise(text)["skill_id"] == skill_id


@pytest.mark.parametrize(("text", "expected"), [
    ("  Éducation  à la SANTÉ! ", "education a la sante"),
    ("تَحْلِيلُ", "تحليل"),
    ("أإآٱ", "اااا"),
    ("مدرسة مستشفى", "مدرسه مستشفي"),
    ("مؤتمر رئيس", "موتمر رييس"),
    ("٢٠٢٤ / ۲۰۲۴", "2024 2024"),
    ("snake_case-and—dash", "snake case and dash"),
    ("", ""),
])
def test_normalise_text(text: str, expected: str) -> None:
    assert normalise_text(text) == expected


def test_match_key_strips_article_only_from_longer_words() -> None:
    assert match_key("تحليل البيانات") == match_key("تحليل بيانات") == "تحليل بيانات"
    assert match_key("الى") == "الي"  # إلى: the letters are not an article
    assert match_key("l'analyse d'enquêtes") == "analyse enquetes"
    assert match_key("vitamin d") == "vitamin d"


def test_unknown_skill_is_kept_as_free_text() -> None:
    assert SHIPPED.normalise("  underwater basket weaving ") == {
        "skill_id": None, "label": "underwater basket weaving",
        "key": "underwater basket weaving"}
    assert SHIPPED.resolve("underwater basket weaving") is None
    assert SHIPPED.normalise("Cafe\u0301 skills")["label"] == "Caf\u00e9 skills"  # NFC


def test_matched_skill_gets_canonical_english_label() -> None:
    assert SHIPPED.normalise("تحليل بيانات") == {
        "skill_id": "sk_data_analysis", "label": "Data analysis", "key": "تحليل بيانات"}


def test_mixed_direction_text_does_not_crash() -> None:
    found = SHIPPED.normalise("Excel إكسل")
    assert found["key"] == "excel اكسل"
    assert found["label"] == "Excel إكسل"


def test_empty_or_blank_text_matches_nothing() -> None:
    assert SHIPPED.resolve("") is None
    assert SHIPPED.normalise(" \u200f ")["skill_id"] is None


# -- lookup API ---------------------------------------------------------------------------
def test_lookup_api() -> None:
    skill = SHIPPED.get("sk_data_analysis")
    assert skill is not None and skill in SHIPPED and "sk_data_analysis" in SHIPPED
    assert SHIPPED.get("sk_nope") is None and "sk_nope" not in SHIPPED and 3 not in SHIPPED
    assert skill.label("fr") == "Analyse de données"
    assert skill.label("fr-CA") == "Analyse de données"
    assert skill.label("de") == "Data analysis"
    assert len({skill, SHIPPED.get("sk_data_analysis")}) == 1  # hashable


def test_as_list() -> None:
    arabic = SHIPPED.as_list("ar")
    assert len(arabic) == len(SHIPPED)
    assert {"id", "category", "label"} <= set(arabic[0])
    assert all(ARABIC.search(item["label"]) for item in arabic)
    assert [i["label"] for i in SHIPPED.as_list("de")] == [s.labels["en"] for s in SHIPPED]


def test_version_tracks_content_not_layout(tmp_path: Path) -> None:
    entries = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert Taxonomy.from_entries(entries).version == SHIPPED.version
    relaid = tmp_path / "taxonomy.yml"
    relaid.write_text(yaml.safe_dump(entries, allow_unicode=True), encoding="utf-8")
    assert Taxonomy.load(relaid).version == SHIPPED.version
    entries[0]["synonyms"]["en"].append("one more synonym")
    assert Taxonomy.from_entries(entries).version != SHIPPED.version
    assert re.fullmatch(r"[0-9a-f]{12}", SHIPPED.version)


# -- validation ---------------------------------------------------------------------------
def test_key_shared_by_two_skills_is_rejected_naming_both() -> None:
    entries = [entry("sk_one", "Data analysis"),
               entry("sk_two", "Statistics", synonyms={"fr": ["data-ANALYSIS"]})]
    with pytest.raises(ValueError, match=r"sk_one.*sk_two"):
        Taxonomy.from_entries(entries)


def test_arabic_variant_key_collision_is_rejected() -> None:
    entries = [entry("sk_one", "One", labels={"en": "One", "ar": "تحليل البيانات"}),
               entry("sk_two", "Two", synonyms={"ar": ["تَحليل بيانات"]})]
    with pytest.raises(ValueError, match=r"sk_one.*sk_two"):
        Taxonomy.from_entries(entries)


def test_same_key_twice_within_one_skill_is_fine() -> None:
    taxonomy = Taxonomy.from_entries([entry(
        "sk_one", "Illustration", labels={"en": "Illustration", "fr": "Illustration"})])
    assert taxonomy.resolve("illustration") is taxonomy.get("sk_one")


@pytest.mark.parametrize(("entries", "message"), [
    ([entry("sk_one", "One", related=["sk_missing"])], "sk_missing"),
    ([entry("sk_one", "One", related=["sk_one"])], "sk_one"),
    ([entry("sk_one", "One"), entry("sk_one", "Other")], "duplicate"),
    ([entry("Sk-One", "One")], "does not match"),
    ([{"id": "sk_one", "category": "data", "labels": {"fr": "Un"}}], "English label"),
    ([entry("sk_one", "One", category="cooking")], "category"),
    ([entry("sk_one", "!!!")], "normalises to nothing"),
    ([entry("sk_one", "One", synonyms={"en": "not a list"})], "list"),
    ({"not": "a list"}, "list"),
])
def test_invalid_entries_are_rejected(entries: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Taxonomy.from_entries(entries)


# -- properties ---------------------------------------------------------------------------
def test_normalise_text_is_idempotent_and_total() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    tricky = st.text(alphabet="أإآٱىةؤئءـًٌٍَُِّْٰ٠١٢۳ ال'’-_ ABCÉéİıßﬁ\u200f\u200e\u0301")

    @hypothesis.settings(max_examples=1000, deadline=None)
    @hypothesis.given(st.one_of(st.text(), tricky))
    def check(text: str) -> None:
        once = normalise_text(text)
        assert normalise_text(once) == once
        assert once == once.strip() and "  " not in once
        assert isinstance(match_key(text), str)
        SHIPPED.normalise(text)

    check()
