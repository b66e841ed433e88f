"""Open Badges 3.0 credentials: issued here, checked by our verifier and by openbadgeslib's.

openbadgeslib is an independent OB 3.0 implementation: agreeing with it is the evidence that
other verifiers accept what we issue. It is given the public key our JWKS names (chosen by
the token's kid) and, for revocation, a `download` that serves our signed status list, so
everything stays offline. It reads the real clock, so credentials here start in the past.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwt.algorithms import RSAAlgorithm
from openbadgeslib.ob3 import OB3VerificationError, OB3Verifier

from services.tasks import credentials as cr

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
LIST_URL = "https://sanad.example/credentials/status/1"
JWKS_URL = "https://sanad.example/credentials/jwks.json"
ISSUER: dict[str, Any] = {"id": "https://sanad.example",
                          "name": {"ar": "سند", "en": "Sanad", "fr": "Sanad"}}
ORGANISATION: dict[str, Any] = {"id": "org_" + "a" * 28, "name": {
    "ar": "جمعية الأمل", "en": "Hope Association", "fr": "Association Espoir"}}
SKILLS = [
    {"id": "digital-literacy", "labels": {
        "ar": "محو الأمية الرقمية", "en": "Digital literacy", "fr": "Littératie numérique"}},
    {"id": "teaching", "labels": {"ar": "التعليم", "en": "Teaching", "fr": "Enseignement"}},
]
ARABIC = re.compile(r"[\u0621-\u064A]")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def old_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    cr.generate_key(directory, "2026-05-01")
    return directory


@pytest.fixture(scope="module")
def ring(old_keys: Path) -> cr.KeyRing:
    return cr.KeyRing.load(old_keys, jwks_url=JWKS_URL)


def credential(index: int = 7, hours: float = 3.5, **changes: Any) -> dict[str, Any]:
    return cr.build_credential(**{
        "credential_id": "6f1c0d3e-8a44-4c1b-9a62-2f5d6c1e7b90", "issuer": ISSUER,
        "organisation": ORGANISATION, "volunteer_id": "vol_42",
        "achievement": {"task_id": "task_9", "title": {
            "ar": "تعليم كبار السن الخدمات الرقمية", "en": "Teach seniors digital services",
            "fr": "Initier les aînés aux services numériques"},
            "description": "Weekly sessions at the library.", "skills": SKILLS, "hours": hours},
        "status": {"list_url": LIST_URL, "index": index}, "now": NOW, **changes})


def status_list(ring: cr.KeyRing, revoked: set[int]) -> str:
    return cr.sign(cr.status_list_credential(LIST_URL, ISSUER, cr.encode_bits(revoked), NOW),
                   ring)


def dereference(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The JWK the token's kid names, as a verifier finds it: the JWKS the kid's URL serves
    (here `jwks`), then the key whose kid is the fragment (or the bare kid of old tokens)."""
    url, _, name = jwt.get_unverified_header(token)["kid"].rpartition("#")
    assert url in ("", JWKS_URL)
    return next(key for key in jwks["keys"] if key["kid"] == name)


def openbadges(token: str, jwks: dict[str, Any], **options: Any) -> Any:
    jwk = dereference(token, jwks)
    return OB3Verifier(pubkey_pem=RSAAlgorithm.from_jwk(jwk)).verify(token, **options)


def old_style(credential: dict[str, Any], keys: Path, kid: str) -> str:
    """A credential as issued before the kid became a URI: bare kid plus embedded jwk."""
    ring = cr.KeyRing.load(keys, kid)
    key, jwk = ring.active()
    claims = {**credential, "iss": credential["issuer"]["id"], "jti": credential["id"],
              "sub": credential["credentialSubject"]["id"],
              "nbf": int(datetime.fromisoformat(credential["validFrom"]).timestamp())}
    body = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode()
    return jwt.api_jws.encode(body, key, algorithm="RS256", headers={
        "kid": kid, "jwk": {k: jwk[k] for k in ("kty", "n", "e")}})


def joserfc_verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """joserfc at its defaults (header at most 512 bytes among them), key from the kid."""
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import RSAKey

    return jose_jwt.decode(token, RSAKey.import_key(dereference(token, jwks))).claims


def tampered(token: str, **subject: Any) -> str:
    """The payload edited, the signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["credentialSubject"].update(subject)
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{edited}.{signature}"


# -- issuing -------------------------------------------------------------------------------
def test_issued_credential_verifies_with_ours_and_openbadgeslib(ring: cr.KeyRing) -> None:
    token = cr.sign(credential(), ring)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"], header["typ"]) == (
        "RS256", JWKS_URL + "#2026-05-01", "JWT")
    report = cr.verify(token, ring.jwks(), now=NOW)
    assert report == {"valid": True, "revoked": None, "errors": [],
                      "credential": report["credential"]}
    assert report["credential"]["credentialSubject"]["id"] == "urn:sanad:volunteer:vol_42"
    verified = openbadges(token, ring.jwks())
    assert verified.id == "urn:uuid:6f1c0d3e-8a44-4c1b-9a62-2f5d6c1e7b90"
    assert verified.issuer.id == "https://sanad.example"
    assert verified.recipient_id == "urn:sanad:volunteer:vol_42"
    assert verified.achievement.name == "Verified volunteering: Teach seniors digital services"
    assert "Digital literacy" in verified.achievement.tags
    assert verified.results[0].value == "3.5"
    assert verified.raw["credentialSubject"]["achievement"]["creator"]["id"] == (
        "urn:sanad:organisation:" + ORGANISATION["id"])


def test_names_and_descriptions_in_arabic_english_and_french(ring: cr.KeyRing) -> None:
    issued = cr.verify(cr.sign(credential(), ring), ring.jwks(), now=NOW)["credential"]
    achievement = issued["credentialSubject"]["achievement"]
    for node in (issued, achievement, achievement["creator"]):
        assert set(node["nameMap"]) == {"ar", "en", "fr"}
        assert node["name"] == node["nameMap"]["en"]
        assert ARABIC.search(node["nameMap"]["ar"])
    assert set(achievement["descriptionMap"]) == {"ar", "en", "fr"}
    assert "Initier les aînés" in achievement["nameMap"]["fr"]
    assert ARABIC.search(achievement["descriptionMap"]["ar"])
    assert {"محو الأمية الرقمية", "Digital literacy", "Littératie numérique"} <= set(
        achievement["tag"])


def test_build_refuses_personal_data_and_bad_hours() -> None:
    with pytest.raises(ValueError, match="opaque id"):
        credential(volunteer_id="someone@example.org")
    with pytest.raises(ValueError, match="hours"):
        credential(hours=0)


# -- refusing ------------------------------------------------------------------------------
def test_kid_is_a_uri_to_the_jwk_and_a_jose_library_at_its_defaults_verifies(
        ring: cr.KeyRing) -> None:
    token = cr.sign(credential(), ring)
    header = jwt.get_unverified_header(token)
    assert header["kid"] == f"{JWKS_URL}#{ring.active_kid}" and "jwk" not in header
    assert len(json.dumps(header)) <= 512
    claims = joserfc_verify(token, ring.jwks())
    assert claims["credentialSubject"]["id"] == "urn:sanad:volunteer:vol_42"
    listed = status_list(ring, set())  # the status list is signed the same way
    assert joserfc_verify(listed, ring.jwks())["id"] == LIST_URL


def test_credentials_issued_with_a_bare_kid_and_embedded_jwk_still_verify(
        ring: cr.KeyRing, old_keys: Path) -> None:
    before = old_style(credential(), old_keys, "2026-05-01")
    assert jwt.get_unverified_header(before)["kid"] == "2026-05-01"
    assert cr.verify(before, ring.jwks(), now=NOW)["valid"]
    assert openbadges(before, ring.jwks()).id.startswith("urn:uuid:")


def test_tampered_token_is_refused_by_both(ring: cr.KeyRing) -> None:
    # Someone claims another volunteer's credential as theirs.
    token = tampered(cr.sign(credential(), ring), id="urn:sanad:volunteer:mallory")
    report = cr.verify(token, ring.jwks(), now=NOW)
    assert not report["valid"]
    assert report["errors"] == ["The signature does not verify."]
    assert report["credential"] is None
    with pytest.raises(OB3VerificationError, match="[Ss]ignature"):
        openbadges(token, ring.jwks())


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
def test_garbage_is_reported_not_raised(ring: cr.KeyRing, token: str) -> None:
    report = cr.verify(token, ring.jwks(), now=NOW)
    assert not report["valid"] and report["errors"]


def test_unknown_key_and_time_window_are_refused(ring: cr.KeyRing) -> None:
    token = cr.sign(credential(), ring)
    assert "No RSA key" in cr.verify(token, {"keys": []}, now=NOW)["errors"][0]
    early = cr.verify(token, ring.jwks(), now=NOW - timedelta(days=1))
    assert early["errors"] == ["Not valid yet."]


# -- rotation ------------------------------------------------------------------------------
def test_old_credentials_still_verify_after_rotation(old_keys: Path, tmp_path: Path) -> None:
    before = cr.sign(credential(), cr.KeyRing.load(old_keys))
    shutil.copy(old_keys / "2026-05-01.pem", tmp_path)
    cr.generate_key(tmp_path, "2026-11-25")
    rotated = cr.KeyRing.load(tmp_path)
    assert rotated.active_kid == "2026-11-25"  # the newest date signs
    after = cr.sign(credential(), rotated)
    assert jwt.get_unverified_header(after)["kid"] == "2026-11-25"  # loaded without a URL
    jwks = rotated.jwks()
    assert [key["kid"] for key in jwks["keys"]] == ["2026-05-01", "2026-11-25"]
    for token in (before, after):
        assert cr.verify(token, jwks, now=NOW)["valid"]
        assert openbadges(token, jwks).id.startswith("urn:uuid:")
    assert cr.KeyRing.load(tmp_path, "2026-05-01").active_kid == "2026-05-01"


def test_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    path = cr.generate_key(tmp_path / "keys", "2026-11-25")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        cr.generate_key(tmp_path / "keys", "2026-11-25")
    with pytest.raises(ValueError):
        cr.generate_key(tmp_path, "../elsewhere")
    key = cr.KeyRing.load(tmp_path / "keys").jwks()["keys"][0]
    assert set(key) == {"kty", "n", "e", "kid", "alg", "use"}
    assert (key["alg"], key["use"]) == ("RS256", "sig")


# -- revocation ----------------------------------------------------------------------------
def test_revoked_credential_is_reported_and_unrevoked_is_not(ring: cr.KeyRing) -> None:
    served = status_list(ring, {0, 7})
    revoked, kept = cr.sign(credential(index=7), ring), cr.sign(credential(index=8), ring)
    jwks = ring.jwks()

    def lists(url: str) -> str | None:
        return served if url == LIST_URL else None

    report = cr.verify(revoked, jwks, lists, now=NOW)
    assert (report["valid"], report["revoked"]) == (False, True)
    assert cr.verify(kept, jwks, lists, now=NOW) == {
        "valid": True, "revoked": False, "errors": [],
        "credential": cr.verify(kept, jwks, now=NOW)["credential"]}
    download = {"download": lambda url: served.encode(), "check_status": True}
    with pytest.raises(OB3VerificationError, match="revocation"):
        openbadges(revoked, jwks, **download)
    openbadges(kept, jwks, **download)  # openbadgeslib also checks the list's signature


def test_status_list_that_cannot_be_trusted_fails_closed(ring: cr.KeyRing) -> None:
    token = cr.sign(credential(index=7), ring)
    forged = tampered(status_list(ring, {7}), encodedList=cr.encode_bits(()))  # un-revoked
    for lists in (lambda url: None, lambda url: forged,
                  lambda url: cr.status_list_credential(url, "https://else.example",
                                                        cr.encode_bits(()), NOW)):
        report = cr.verify(token, ring.jwks(), lists, now=NOW)
        assert not report["valid"] and report["errors"], report


def test_status_list_round_trip_and_bit_order() -> None:
    last = cr.STATUS_LIST_BITS - 1
    encoded = cr.encode_bits({0, 9, last})
    assert encoded.startswith("u") and "=" not in encoded
    bits = cr.decode_bits(encoded)
    assert len(bits) == cr.STATUS_LIST_BITS // 8
    assert (bits[0], bits[1], bits[-1]) == (0x80, 0x40, 0x01)  # bit 0 = first byte's high bit
    assert [i for i in (0, 1, 8, 9, last - 1, last) if cr.is_set(encoded, i)] == [0, 9, last]
    assert cr.encode_bits([]) == cr.encode_bits(set())  # deterministic: no gzip timestamp
    with pytest.raises(ValueError):
        cr.encode_bits({cr.STATUS_LIST_BITS})


# -- command line --------------------------------------------------------------------------
def test_cli_verifies_a_file_offline(ring: cr.KeyRing, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps(ring.jwks()))
    (tmp_path / "status.jwt").write_text(status_list(ring, {7}))
    (tmp_path / "kept.jwt").write_text(cr.sign(credential(index=8), ring))
    (tmp_path / "revoked.jwt").write_text(cr.sign(credential(index=7), ring))
    common = ["--jwks", str(tmp_path / "jwks.json"), "--status-list", str(tmp_path / "status.jwt")]
    assert cr.main(["verify", str(tmp_path / "revoked.jwt"), *common]) == 1
    assert json.loads(capsys.readouterr().out)["revoked"] is True
    done = subprocess.run([sys.executable, "-m", "services.tasks.credentials", "verify",
                           str(tmp_path / "kept.jwt"), *common],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["valid"], report["revoked"], report["subject"]) == (
        True, False, "urn:sanad:volunteer:vol_42")


def test_cli_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cr.main(["keygen", str(tmp_path), "--kid", "2026-11-25"]) == 0
    assert json.loads(capsys.readouterr().out)["kid"] == "2026-11-25"
    assert cr.KeyRing.load(tmp_path).active_kid == "2026-11-25"


STARTER = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
from services.tasks.service import SigningKeys
keys = SigningKeys()
keys.container = SimpleNamespace(config={"CREDENTIAL_KEYS_DIR": sys.argv[1],
                                         "CREDENTIAL_KEYS_AUTOGEN": True})
go = Path(sys.argv[2])
(go.parent / f"ready-{id(keys)}-{time.monotonic_ns()}").touch()
while not go.exists():  # all start set up at once, like replicas rolled out together
    time.sleep(0.001)
keys.setup()
print(keys.keyring.active_kid)
"""


def test_processes_starting_together_on_an_empty_keys_dir_all_start_with_one_key(
        tmp_path: Path) -> None:
    keys, go = tmp_path / "keys", tmp_path / "go"
    starters = [subprocess.Popen([sys.executable, "-c", STARTER, str(keys), str(go)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(4)]
    try:
        while len(list(tmp_path.glob("ready-*"))) < len(starters) and all(
                starter.poll() is None for starter in starters):
            time.sleep(0.01)  # until every one has imported, then release them together
        go.touch()
        results = [starter.communicate(timeout=120) for starter in starters]
    finally:
        for starter in starters:
            if starter.poll() is None:
                starter.kill()
    assert [starter.returncode for starter in starters] == [0] * 4, [e for _, e in results]
    assert len({out for out, _ in results}) == 1
    [pem] = keys.glob("*.pem")
    assert cr.KeyRing.load(keys).active_kid == pem.stem  # whole, not half-written
