"""Skill taxonomy: canonical skills and the rules that map free text onto them.

Volunteers and NGOs type skills in Arabic, French and English, with or without accents,
harakat, hamza forms or the definite article. Everything is compared through one key so
"تحليل البيانات" and "تحليل بيانات" land on the same skill, while text that matches
nothing is kept as typed: a skill we do not know yet is still the volunteer's skill.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).with_name("taxonomy.yml")
CATEGORIES = frozenset({"education", "language", "data", "technology", "care",
                        "communication", "management", "creative", "health", "other"})
_ID = re.compile(r"^sk_[a-z0-9_]+\Z")
# Part of `version`: stored keys depend on these rules as much as on the file, so a rule
# change must be visible to consumers even when taxonomy.yml is untouched.
_KEY_SCHEME = 1

# Hamza seats, alef wasla, alef maqsura and ta marbuta are spelt inconsistently in
# everyday typing (and keyboards); Persian yeh/keheh arrive via Persian layouts.
_FOLD: dict[int, str | None] = {ord(k): v for k, v in {
    "أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه", "ؤ": "و", "ئ": "ي",
    "ی": "ي", "ک": "ك", "\u0640": None,  # tatweel only stretches a word visually
}.items()}
_FOLD.update({0x0660 + d: str(d) for d in range(10)})  # Arabic-Indic digits
_FOLD.update({0x06F0 + d: str(d) for d in range(10)})  # Eastern Arabic-Indic digits
# Marks carry accents/harakat/hamza-above after NFD; format chars (RLM, ZWJ...) are
# invisible bidi/joining hints that pasted mixed-direction text is full of.
_DROP = frozenset({"Mn", "Me", "Cf"})
_ELISIONS = frozenset({"l", "d"})  # what remains of l'/d' once the apostrophe is a space


def normalise_text(text: str) -> str:
    """Fold `text` to a comparison form: no case, accents, harakat or spelling variants."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_FOLD)
    out = []
    for char in unicodedata.normalize("NFD", folded):
        category = unicodedata.category(char)
        if category in _DROP:
            continue
        out.append(" " if category[0] in "PZ" or category == "Cc" else char)
    return unicodedata.normalize("NFC", " ".join("".join(out).split()))


def match_key(text: str) -> str:
    """The lookup key: normalised text without Arabic article or French elisions."""
    words = normalise_text(text).split()
    kept = []
    for i, word in enumerate(words):
        if word in _ELISIONS and i + 1 < len(words):
            continue
        # Short words keep it: in "الي" (إلى) or "اله" the letters are not an article.
        if word.startswith("ال") and len(word) > 3:
            word = word[2:]
        kept.append(word)
    return " ".join(kept)


@dataclass(frozen=True)
class Skill:
    id: str
    category: str
    labels: dict[str, str] = field(hash=False)
    synonyms: dict[str, tuple[str, ...]] = field(hash=False)
    related: tuple[str, ...] = ()

    def label(self, lang: str) -> str:
        """The label in `lang` (or its primary subtag, "fr-CA" -> "fr"), else English."""
        return (self.labels.get(lang) or self.labels.get(lang.split("-")[0].lower())
                or self.labels["en"])

    def terms(self) -> Iterator[tuple[str, str]]:
        """Every (lang, text) this skill answers to: labels first, then synonyms."""
        yield from self.labels.items()
        for lang, words in self.synonyms.items():
            for word in words:
                yield lang, word


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: expected a list of non-empty strings")
    return value


def _parse(entry: Any, index: int) -> Skill:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {index}: expected a mapping")
    skill_id = entry.get("id")
    if not isinstance(skill_id, str) or not _ID.match(skill_id):
        raise ValueError(f"entry {index}: id {skill_id!r} does not match {_ID.pattern}")
    if entry.get("category") not in CATEGORIES:
        raise ValueError(f"{skill_id}: unknown category {entry.get('category')!r}")
    labels = entry.get("labels")
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in labels.items()):
        raise ValueError(f"{skill_id}: labels must map language codes to non-empty strings")
    if "en" not in labels:
        raise ValueError(f"{skill_id}: an English label is required (it is the fallback)")
    synonyms = entry.get("synonyms") or {}
    if not isinstance(synonyms, dict):
        raise ValueError(f"{skill_id}: synonyms must map language codes to lists")
    return Skill(
        id=skill_id, category=entry["category"], labels=dict(labels),
        synonyms={str(lang): tuple(_strings(words, f"{skill_id}.synonyms.{lang}"))
                  for lang, words in synonyms.items()},
        related=tuple(_strings(entry.get("related") or [], f"{skill_id}.related")))


class Taxonomy:
    """An immutable, validated set of skills with text lookup."""

    def __init__(self, skills: Iterable[Skill]) -> None:
        self._by_id: dict[str, Skill] = {}
        self._by_key: dict[str, Skill] = {}
        for skill in skills:
            if skill.id in self._by_id:
                raise ValueError(f"duplicate skill id {skill.id}")
            self._by_id[skill.id] = skill
            for _lang, text in skill.terms():
                key = match_key(text)
                if not key:
                    raise ValueError(f"{skill.id}: {text!r} normalises to nothing")
                owner = self._by_key.setdefault(key, skill)
                if owner is not skill:
                    # Otherwise one of them would silently win depending on file order.
                    raise ValueError(f"match key {key!r} is shared by {owner.id} and "
                                     f"{skill.id} (from {text!r})")
        for skill in self._by_id.values():
            for other in skill.related:
                if other not in self._by_id or other == skill.id:
                    raise ValueError(f"{skill.id}: related id {other!r} is not another skill")
        canonical = [[s.id, s.category, s.labels, {k: list(v) for k, v in s.synonyms.items()},
                      list(s.related)] for s in self._by_id.values()]
        # Hash the parsed content, not file bytes: comments and layout do not change mapping.
        blob = json.dumps([_KEY_SCHEME, canonical], sort_keys=True, ensure_ascii=False)
        self._version = hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_entries(cls, entries: list[dict[str, Any]]) -> Taxonomy:
        if not isinstance(entries, list):
            raise ValueError("taxonomy must be a list of skill entries")
        return cls(_parse(entry, i) for i, entry in enumerate(entries))

    @classmethod
    def load(cls, path: Path | None = None) -> Taxonomy:
        with (path or DEFAULT_PATH).open(encoding="utf-8") as handle:
            return cls.from_entries(yaml.safe_load(handle))

    @property
    def version(self) -> str:
        """Short content hash, recorded with normalised data to say which taxonomy did it."""
        return self._version

    def get(self, skill_id: str) -> Skill | None:
        return self._by_id.get(skill_id)

    def __contains__(self, item: object) -> bool:
        skill_id = item.id if isinstance(item, Skill) else item
        return isinstance(skill_id, str) and skill_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Skill]:
        return iter(self._by_id.values())

    def resolve(self, text: str) -> Skill | None:
        """The skill `text` names, by exact id or by any label/synonym in any language."""
        if text in self._by_id:
            return self._by_id[text]
        key = match_key(text)
        return self._by_key.get(key) if key else None

    def normalise(self, text: str) -> dict[str, str | None]:
        """Map free text to a skill; unknown text is kept (NFC, stripped), never dropped."""
        skill = self.resolve(text)
        return {"skill_id": skill.id if skill else None,
                "label": skill.labels["en"] if skill else
                unicodedata.normalize("NFC", text).strip(),
                "key": match_key(text)}

    def as_list(self, lang: str = "en") -> list[dict[str, Any]]:
        return [{"id": s.id, "category": s.category, "label": s.label(lang),
                 "related": list(s.related)} for s in self]


@functools.lru_cache(maxsize=1)
def default_taxonomy() -> Taxonomy:
    """The shipped taxonomy, parsed and validated once per process."""
    return Taxonomy.load()
