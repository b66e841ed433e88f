"""Realistic test data."""
from __future__ import annotations

from typing import Any


def volunteer(email: str = "Rana@Example.org", **overrides: Any) -> dict[str, Any]:
    data = {
        "email": email,
        "name": "رنا الخطيب",
        "phone": "+9613123456",
        "preferred_language": "ar",
        "languages": [{"code": "ar", "level": "native"}, {"code": "EN", "level": "fluent"}],
        "skills": [{"name": "تحليل البيانات", "level": "advanced"},
                   {"name": "Underwater basket weaving"}],
        "skills_to_learn": ["Project management"],
        "availability": {"timezone": "Asia/Beirut", "hours_per_week": 4,
                         "windows": [{"day": "tue", "start": "17:00", "end": "19:00"},
                                     {"day": "tue", "start": "18:30", "end": "20:00"}]},
        "mode": "remote",
        "location": {"country": "lb", "region": "Tripoli", "lat": 34.43671, "lng": 35.84972},
        "about": "أدرّس الرياضيات عن بعد — I tutor maths online.",
        "consent": {"terms_version": "2026-01", "privacy_accepted": True},
    }
    data.update(overrides)
    return data
