"""Open Badges 3.0 credentials for verified contributions: build, sign (VC-JWT, RS256), verify.

Pure: no broker, store or clock (time is passed in). The service publishes `KeyRing.jwks()`
and a signed Bitstring Status List; with those two documents anyone can check a credential
offline: `verify`, `python -m services.tasks.credentials verify`, or any OB 3.0 verifier.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import math
import os
import re
import sys
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

VC_CONTEXT = "https://www.w3.org/ns/credentials/v2"
OB_CONTEXT = "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"
# The OB 3.0 JSON schema types name/description as plain strings (openbadgeslib refuses a
# language-tagged achievement name), so those stay English and all three languages ride in
# JSON-LD language maps, spelled the way ActivityStreams spells them.
LANGUAGE_MAPS = {"nameMap": {"@id": "https://schema.org/name", "@container": "@language"},
                 "descriptionMap": {"@id": "https://schema.org/description",
                                    "@container": "@language"}}
LANGUAGES = ("ar", "en", "fr")
ALGORITHM = "RS256"
STATUS_LIST_BITS = 131072  # the spec's minimum: a long list hides whose bit changed
MAX_LIST_BYTES = 1 << 22  # a status list may come from anywhere: cap what it inflates to
LEEWAY = timedelta(minutes=5)  # clock skew between the issuer and a verifier
REGISTERED_CLAIMS = ("iss", "sub", "jti", "nbf", "exp")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # opaque ids; kids also name files
# What a hostile token can make parsing raise: `verify` reports these, never raises them.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
              OSError, RecursionError)

TEXTS: dict[str, dict[str, str]] = {
    "name": {"ar": "تطوّع موثّق: {title}", "en": "Verified volunteering: {title}",
             "fr": "Bénévolat vérifié : {title}"},
    "description": {
        "ar": "مساهمة تطوعية في مهمة لدى {organisation}، تحقّق منها منسّقوها. {description}",
        "en": "A volunteer contribution to a task offered by {organisation}, verified by "
              "its coordinators. {description}",
        "fr": "Une contribution bénévole à une mission proposée par {organisation}, vérifiée "
              "par ses coordinateurs. {description}"},
    "narrative": {
        "ar": "أنجز المتطوّع المهمة وتحقّق منسّق من {organisation} من الساعات التي سجّلها.",
        "en": "The volunteer completed the task and a coordinator of {organisation} verified "
              "the hours they logged.",
        "fr": "Le bénévole a accompli la mission et l'organisation {organisation} a vérifié "
              "les heures déclarées."},
    "hours": {"ar": "ساعات التطوّع الموثّقة", "en": "Verified volunteering hours",
              "fr": "Heures de bénévolat vérifiées"},
}


class KeyRing:
    """RSA keys by kid: the active one signs; all stay in the JWKS, so credentials signed
    before a rotation keep verifying. Parsed once: parsing costs far more than signing."""

    def __init__(self, keys: Mapping[str, rsa.RSAPrivateKey],
                 active_kid: str | None = None, jwks_url: str | None = None) -> None:
        # Where the JWKS is published: the header's kid is then `<jwks_url>#<kid>`, the URI
        # OB 3.0 asks for; without it (offline tools, old callers) the bare kid.
        self.jwks_url = jwks_url
        self.active_kid = active_kid or max(keys, default="")  # date-named: the newest signs
        if self.active_kid not in keys:
            raise ValueError(f"No signing key {self.active_kid!r}." if keys else "No keys.")
        self._keys = dict(keys)
        self._jwks: dict[str, dict[str, Any]] = {}
        for kid, key in sorted(keys.items()):
            public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            self._jwks[kid] = {"kty": "RSA", "n": public["n"], "e": public["e"], "kid": kid,
                               "alg": ALGORITHM, "use": "sig"}

    @classmethod
    def load(cls, directory: Path, active_kid: str | None = None,
             jwks_url: str | None = None) -> KeyRing:
        keys = {}
        for path in sorted(Path(directory).glob("*.pem")):
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
                raise ValueError(f"{path.name}: not an RSA key of 2048 bits or more.")
            keys[_opaque(path.stem, "kid")] = key
        return cls(keys, active_kid, jwks_url)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(jwk) for jwk in self._jwks.values()]}

    def active(self) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
        return self._keys[self.active_kid], self._jwks[self.active_kid]

    def key_uri(self) -> str:
        """The active key as a URI that dereferences to its JWK: the JWKS, kid as fragment."""
        return f"{self.jwks_url}#{self.active_kid}" if self.jwks_url else self.active_kid


def generate_key(directory: Path, kid: str, bits: int = 2048) -> Path:
    if bits not in (2048, 3072):
        raise ValueError("Use 2048 or 3072 bits.")
    path = Path(directory) / f"{_opaque(kid, 'kid')}.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written aside, then linked into place: a process loading the folder meanwhile never
    # reads half a key, and link, like O_EXCL, refuses to overwrite one (that would leave
    # every credential it signed unverifiable).
    fd, aside = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp makes it 0600
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.link(aside, path)
    finally:
        os.unlink(aside)
    return path


def ensure_key(directory: Path, kid: str) -> Path | None:
    """A first key when the folder has none; the path of the key made, or None. Safe when
    several processes start at once: one makes the key, the others wait and load it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".keygen.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        if any(directory.glob("*.pem")):
            return None
        return generate_key(directory, kid)


def build_credential(*, credential_id: str, issuer: Mapping[str, Any],
                     organisation: Mapping[str, Any], volunteer_id: str,
                     achievement: Mapping[str, Any], status: Mapping[str, Any], now: datetime,
                     texts: Mapping[str, Mapping[str, str]] = TEXTS) -> dict[str, Any]:
    """An OpenBadgeCredential. The achievement is the task, the same for everyone who did
    it; this volunteer's verified hours are the subject's result. Names may be a string or
    {ar, en, fr}; skills are [{id, labels: {ar, en, fr}}]."""
    hours, index = float(achievement["hours"]), int(status["index"])
    if not math.isfinite(hours) or hours <= 0 or index < 0:
        raise ValueError("hours must be positive and the status index 0 or more.")
    org, title = _localised(organisation["name"]), _localised(achievement["title"])
    about = _localised(achievement.get("description") or "")

    def say(key: str) -> dict[str, str]:
        return {lang: texts[key][lang].format(title=title[lang], organisation=org[lang],
                                              description=about[lang]).strip()
                for lang in LANGUAGES}

    task = f"urn:sanad:task:{_opaque(achievement['task_id'], 'task_id')}"
    labels = [skill["labels"] for skill in achievement.get("skills") or []]
    return {
        "@context": [VC_CONTEXT, OB_CONTEXT, {k: dict(v) for k, v in LANGUAGE_MAPS.items()}],
        "id": f"urn:uuid:{uuid.UUID(credential_id.removeprefix('urn:uuid:'))}",
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "issuer": _profile(issuer, str(issuer["id"])), "validFrom": _iso(now),
        **_named(say("name")),
        "credentialSubject": {
            "id": f"urn:sanad:volunteer:{_opaque(volunteer_id, 'volunteer_id')}",
            "type": ["AchievementSubject"],
            "achievement": {
                "id": task, "type": ["Achievement"], **_named(say("name")),
                **_named(say("description"), "description"), "inLanguage": "en",
                "criteria": {"narrative": say("narrative")["en"]},
                "creator": _profile(organisation, "urn:sanad:organisation:"
                                    + _opaque(organisation["id"], "organisation id")),
                "tag": list(dict.fromkeys(label[lang] for label in labels
                                          for lang in LANGUAGES if label.get(lang))),
                "resultDescription": [{"id": f"{task}:hours", "type": ["ResultDescription"],
                                       **_named(say("hours")), "valueMin": "0",
                                       "resultType": "ext:VolunteerHours"}]},
            "result": [{"type": ["Result"], "resultDescription": f"{task}:hours",
                        "value": f"{hours:g}"}]},
        "credentialStatus": {
            "id": f"{status['list_url']}#{index}", "type": "BitstringStatusListEntry",
            "statusPurpose": "revocation", "statusListIndex": str(index),
            "statusListCredential": status["list_url"]},
    }


def sign(credential: Mapping[str, Any], keyring: KeyRing) -> str:
    """OB 3.0 VC-JWT: the payload is the credential itself plus iss/sub/jti/nbf(/exp)."""
    claims = {**credential, "iss": _id_of(credential["issuer"]), "jti": credential["id"],
              "nbf": int(_moments(credential["validFrom"])[0].timestamp())}
    if subject_id := _id_of(credential["credentialSubject"]):
        claims["sub"] = subject_id
    if credential.get("validUntil"):
        claims["exp"] = int(_moments(credential["validUntil"])[0].timestamp())
    key, _ = keyring.active()
    # Raw UTF-8, not PyJWT's \u escapes, which would triple the size of Arabic text.
    body = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode()
    # A dereferenceable kid and no embedded jwk: with the 2048-bit jwk the header was 568
    # bytes, and verifiers such as joserfc refuse headers over 512 bytes by default.
    return jwt.api_jws.encode(body, key, algorithm=ALGORITHM,
                              headers={"kid": keyring.key_uri()})


class _Invalid(Exception):
    """Why a token is not a valid credential."""


StatusLists = Callable[[str], Mapping[str, Any] | str | None]


def verify(token: str, jwks: Mapping[str, Any], status_lists: StatusLists | None = None, *,
           now: datetime) -> dict[str, Any]:
    """Offline verification that never raises for a bad token. `status_lists(url)` gives the
    list credential (a VC-JWT, checked against the same JWKS, or a dict the caller already
    trusts) or None; without the callable `revoked` is None: not checked."""
    report: dict[str, Any] = {"valid": False, "revoked": None, "errors": [], "credential": None}
    try:
        claims = _verified_claims(token, jwks)
        report["credential"] = {k: v for k, v in claims.items() if k not in REGISTERED_CLAIMS}
        _check_credential(claims, now)
        if status_lists is not None:
            report["revoked"] = _revoked(claims, jwks, status_lists, now)
            if report["revoked"]:
                raise _Invalid("The credential has been revoked.")
        report["valid"] = True
    except _Invalid as exc:
        report["errors"].append(str(exc))
    except _MALFORMED as exc:
        report["errors"].append(f"Malformed credential: {exc!r}")
    return report


def _verified_claims(token: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    try:
        header = jwt.api_jws.get_unverified_header(token)
    except (jwt.PyJWTError, *_MALFORMED) as exc:
        raise _Invalid(f"Not a compact JWS: {exc}") from None
    if header.get("alg") != ALGORITHM:  # the token never chooses the algorithm
        raise _Invalid(f"Algorithm {header.get('alg')!r} is not {ALGORITHM}.")
    kid = header.get("kid")
    # `<jwks url>#<kid>` since the kid became a URI; a bare kid (with an embedded jwk) in
    # credentials issued before, which must keep verifying.
    name = kid.rpartition("#")[2] if isinstance(kid, str) else kid
    jwk = next((k for k in jwks.get("keys", []) if isinstance(k, Mapping)
                and k.get("kid") == name and k.get("kty") == "RSA"), None)
    if jwk is None:
        raise _Invalid(f"No RSA key {kid!r} in the JWKS.")
    embedded = header.get("jwk", jwk)
    if not isinstance(embedded, Mapping) or [embedded.get("n"), embedded.get("e")] != [
            jwk["n"], jwk["e"]]:
        raise _Invalid("The header's jwk is not the JWKS key its kid names.")
    try:
        decoded = jwt.api_jws.decode_complete(token, _public_key(jwk["n"], jwk["e"]),
                                              algorithms=[ALGORITHM])
    except jwt.InvalidSignatureError:
        raise _Invalid("The signature does not verify.") from None
    except jwt.PyJWTError as exc:
        raise _Invalid(f"Unreadable token: {exc}") from None
    claims = json.loads(decoded["payload"])
    if not isinstance(claims, dict):
        raise _Invalid("The payload is not a JSON object.")
    return claims


@lru_cache(maxsize=64)
def _public_key(n: str, e: str) -> Any:
    return RSAAlgorithm.from_jwk({"kty": "RSA", "n": n, "e": e})


def _check_credential(claims: Mapping[str, Any], now: datetime) -> None:
    context, types = claims.get("@context"), set(_listed(claims.get("type")))
    subject = claims["credentialSubject"]
    achievement = subject["achievement"]
    for ok, problem in (
        (isinstance(context, list) and context[0] == VC_CONTEXT and len(context) > 1
         and str(context[1]).startswith(OB_CONTEXT.rsplit("-", 1)[0]),
         "@context must start with the VC 2.0 and OB 3.0 contexts."),
        ("VerifiableCredential" in types and types & {"OpenBadgeCredential",
                                                      "AchievementCredential"},
         f"Not an OpenBadgeCredential: type {claims.get('type')!r}."),
        (_id_of(claims.get("issuer")) and claims.get("iss") == _id_of(claims["issuer"]),
         "iss does not match the issuer."),
        (claims.get("id") and claims.get("jti") == claims["id"], "jti is not the id."),
        (subject.get("id") == claims.get("sub"), "sub is not the credential subject."),
        ("Achievement" in _listed(achievement.get("type"))
         and isinstance(achievement.get("name"), str), "No named Achievement."),
        ("validFrom" in claims, "validFrom is missing."),
    ):
        if not ok:
            raise _Invalid(problem)
    _check_window(claims, now)


def _check_window(doc: Mapping[str, Any], now: datetime) -> None:
    if any(start > now + LEEWAY for start in _moments(doc.get("validFrom"), doc.get("nbf"))):
        raise _Invalid("Not valid yet.")
    if any(end < now - LEEWAY for end in _moments(doc.get("validUntil"), doc.get("exp"))):
        raise _Invalid("Expired.")


def _moments(*values: Any) -> list[datetime]:
    """ISO 8601 (a naive one then fails to compare: reported malformed) or JWT seconds."""
    return [datetime.fromisoformat(value) if isinstance(value, str)
            else datetime.fromtimestamp(value, UTC) for value in values if value is not None]


def _revoked(credential: Mapping[str, Any], jwks: Mapping[str, Any],
             status_lists: StatusLists, now: datetime) -> bool:
    revoked = False
    for entry in _listed(credential.get("credentialStatus")):
        if entry.get("type") != "BitstringStatusListEntry":
            raise _Invalid(f"Unsupported credentialStatus {entry.get('type')!r}.")
        url = entry["statusListCredential"]
        try:
            revoked |= is_set(_status_list(url, status_lists, jwks, now, credential, entry),
                              int(entry["statusListIndex"]))
        except _Invalid as exc:
            raise _Invalid(f"Status list {url}: {exc}") from None
    return revoked


def _status_list(url: str, status_lists: StatusLists, jwks: Mapping[str, Any], now: datetime,
                 credential: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """The encodedList of the list `entry` points to, once the list has earned trust."""
    try:
        served = status_lists(url)
    except Exception as exc:  # whatever a fetch raises, fail closed
        raise _Invalid(f"Unavailable ({exc}).") from None
    if served is None:
        raise _Invalid("Unavailable.")
    doc = _verified_claims(served, jwks) if isinstance(served, str) else served
    if doc.get("id") != url or "BitstringStatusListCredential" not in _listed(doc["type"]):
        raise _Invalid("Another list was given.")
    if _id_of(doc.get("issuer")) != _id_of(credential.get("issuer")):
        raise _Invalid("Issued by someone else.")
    _check_window(doc, now)
    if doc["credentialSubject"].get("statusPurpose") != entry.get("statusPurpose"):
        raise _Invalid("For another purpose.")
    return str(doc["credentialSubject"]["encodedList"])


def encode_bits(set_indices: Iterable[int], size: int = STATUS_LIST_BITS) -> str:
    """Bitstring Status List `encodedList`: multibase base64url of the GZIP'd bitstring."""
    if size < STATUS_LIST_BITS or size % 8:
        raise ValueError(f"size must be a multiple of 8 of at least {STATUS_LIST_BITS}.")
    bits = bytearray(size // 8)
    for index in set_indices:
        if not 0 <= index < size:
            raise ValueError(f"Index {index} is outside the list.")
        bits[index // 8] |= 0x80 >> (index % 8)  # bit 0 is the first byte's high bit
    # zlib's gzip header carries no timestamp: the same revocations give the same list.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = packer.compress(bytes(bits)) + packer.flush()
    return "u" + base64.urlsafe_b64encode(packed).decode().rstrip("=")


def decode_bits(encoded: str) -> bytes:
    if not encoded.startswith("u"):
        raise ValueError("encodedList must be multibase base64url (prefix 'u').")
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip framing
    bits = inflater.decompress(base64.urlsafe_b64decode(
        encoded[1:] + "=" * (-len(encoded[1:]) % 4)), MAX_LIST_BYTES)
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("encodedList is truncated or too large.")
    return bits


def is_set(encoded: str, index: int) -> bool:
    bits = decode_bits(encoded)
    if not 0 <= index < len(bits) * 8:
        raise ValueError(f"Index {index} is outside the list.")
    return bool(bits[index // 8] & (0x80 >> (index % 8)))


def status_list_credential(list_url: str, issuer: Mapping[str, Any] | str, encoded: str,
                           now: datetime, valid_until: datetime | None = None) -> dict[str, Any]:
    """A BitstringStatusListCredential, to `sign`. With `valid_until` an old copy (fewer
    revocations) cannot be replayed once the list has been republished."""
    return {"@context": [VC_CONTEXT], "id": list_url,
            "type": ["VerifiableCredential", "BitstringStatusListCredential"],
            "issuer": _id_of(issuer), "validFrom": _iso(now),
            **({"validUntil": _iso(valid_until)} if valid_until else {}),
            "credentialSubject": {"id": f"{list_url}#list", "type": "BitstringStatusList",
                                  "statusPurpose": "revocation", "encodedList": encoded}}


def _localised(value: str | Mapping[str, str]) -> dict[str, str]:
    if isinstance(value, str):
        return dict.fromkeys(LANGUAGES, value)
    fallback = value.get("en") or next(iter(value.values()))
    return {lang: value.get(lang) or fallback for lang in LANGUAGES}


def _named(texts: Mapping[str, str], field: str = "name") -> dict[str, Any]:
    if len(set(texts.values())) == 1:
        return {field: texts["en"]}
    return {field: texts["en"], f"{field}Map": dict(texts)}


def _profile(data: Mapping[str, Any], profile_id: str) -> dict[str, Any]:
    profile = {"id": profile_id, "type": ["Profile"], **_named(_localised(data["name"]))}
    return {**profile, "url": data["url"]} if data.get("url") else profile


def _opaque(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):  # an id, never an address
        raise ValueError(f"{what} {value!r} is not an opaque id.")
    return value


def _id_of(value: Any) -> str | None:
    value = value.get("id") if isinstance(value, Mapping) else value
    return value if isinstance(value, str) else None


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("Pass an aware datetime.")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.tasks.credentials")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="verify a VC-JWT credential file offline")
    check.add_argument("file", type=Path)
    check.add_argument("--jwks", type=Path, required=True)
    check.add_argument("--status-list", type=Path, help="its status list (VC-JWT or JSON)")
    keygen = commands.add_parser("keygen", help="write a new signing key DIR/KID.pem")
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("--kid", required=True)
    keygen.add_argument("--bits", type=int, choices=(2048, 3072), default=2048)
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            path = generate_key(args.directory, args.kid, args.bits)
            print(json.dumps({"kid": args.kid, "path": str(path)}))
            return 0
        token, jwks = args.file.read_text().strip(), json.loads(args.jwks.read_text())
        served = args.status_list.read_text().strip() if args.status_list else None
        listed = json.loads(served) if served and served.startswith("{") else served
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    # The one clock read: the command line is an edge, like a service entrypoint.
    report = verify(token, jwks, None if listed is None else (lambda _url: listed),
                    now=datetime.now(UTC))
    credential = report.pop("credential") or {}
    print(json.dumps({**report, "id": credential.get("id"),
                      "issuer": _id_of(credential.get("issuer")),
                      "subject": _id_of(credential.get("credentialSubject")),
                      "name": credential.get("name"), "validFrom": credential.get("validFrom")},
                     ensure_ascii=False, indent=2))
    return 0 if report["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
