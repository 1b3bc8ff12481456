"""What redact-json decides, with no gateway bindings: its settings, which
responses are JSON, and the redaction itself.

Kept apart from redact_json.py so a plain Python can import and test it
(test_redact.py); the
component imports it as it is.
"""
import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Dict, FrozenSet, Optional, Tuple

MIB = 1024 * 1024
DEFAULT_REPLACEMENT = "[redacted]"
DEFAULT_MAX_BODY_BYTES = MIB
# The contract's ceiling for a body a filter buffers (body-limit.max-bytes).
MAX_BODY_BYTES_CEILING = 16 * MIB
OVER_LIMIT_POLICIES = ("refuse", "pass")
# The status a refused response gets: the contract's default for a
# response body over the limit, since it is the upstream's answer that
# cannot be delivered, not the client's request that is wrong.
REFUSE_STATUS = 502
# A field names a label value of the redactions metric, which the host
# takes up to 128 bytes.
MAX_FIELD_BYTES = 128

SETTINGS = ("fields", "replacement", "max_body_bytes", "over_limit")


class ConfigError(ValueError):
    """A setting is wrong; the message follows the gateway's
    ``at `PATH`: ...`` convention so the error points at the TOML line."""


@dataclass(frozen=True)
class Settings:
    fields: Tuple[str, ...]
    replacement: str
    max_body_bytes: int
    over_limit: str

    @property
    def field_set(self) -> FrozenSet[str]:
        return frozenset(self.fields)


def parse_settings(config_json: str) -> Settings:
    """The settings in the filter's `[filters.NAME.config]` table, as the
    gateway hands it over (JSON), or ConfigError."""
    try:
        config = json.loads(config_json) if config_json.strip() else {}
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError("config must be a table")

    # A misspelt setting would otherwise leave a default in force silently,
    # which for a redaction filter means data going out that was meant not to.
    for key in config:
        if key not in SETTINGS:
            raise ConfigError(f"at `{key}`: unknown setting (expected one of {', '.join(SETTINGS)})")

    if "fields" not in config:
        raise ConfigError("at `fields`: required: the JSON object keys whose values are redacted")
    fields = config["fields"]
    if not isinstance(fields, list) or not fields:
        raise ConfigError("at `fields`: must be a non-empty list of strings")
    seen: Dict[str, None] = {}
    for i, field in enumerate(fields):
        if not isinstance(field, str):
            raise ConfigError(f"at `fields[{i}]`: must be a string")
        if not field:
            raise ConfigError(f"at `fields[{i}]`: must not be empty")
        if len(field.encode("utf-8")) > MAX_FIELD_BYTES:
            raise ConfigError(f"at `fields[{i}]`: must be at most {MAX_FIELD_BYTES} bytes (it labels the redactions metric)")
        seen[field] = None  # a dict keeps the order and drops repeats

    replacement = config.get("replacement", DEFAULT_REPLACEMENT)
    if not isinstance(replacement, str):
        raise ConfigError("at `replacement`: must be a string")

    max_body_bytes = config.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    # bool is an int in Python; `max_body_bytes = true` is a mistake, not 1.
    if (not isinstance(max_body_bytes, int) or isinstance(max_body_bytes, bool)
            or not 1 <= max_body_bytes <= MAX_BODY_BYTES_CEILING):
        raise ConfigError(f"at `max_body_bytes`: must be an integer from 1 to {MAX_BODY_BYTES_CEILING} (16 MiB)")

    over_limit = config.get("over_limit", "refuse")
    if over_limit not in OVER_LIMIT_POLICIES:
        raise ConfigError('at `over_limit`: must be "refuse" or "pass"')

    return Settings(tuple(seen), replacement, max_body_bytes, over_limit)


def is_json_media_type(content_type: Optional[bytes]) -> bool:
    """Whether a `content-type` value names JSON: application/json or a
    `+json` structured syntax (application/problem+json, ...)."""
    if content_type is None:
        return False
    media_type = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        return True
    kind, slash, subtype = media_type.partition("/")
    return bool(kind) and slash == "/" and subtype.endswith("+json") and len(subtype) > len("+json")


def is_identity_coding(content_encoding: Optional[bytes]) -> bool:
    """Whether a `content-encoding` value leaves the body as it is."""
    if content_encoding is None:
        return True
    codings = [c.strip().lower() for c in content_encoding.decode("latin-1").split(",")]
    return all(c in ("", "identity") for c in codings)


class NotJson(ValueError):
    """The body is not a JSON text: it passes unchanged."""


class CannotRedact(ValueError):
    """The body is JSON the filter cannot parse or write back whole (nested
    too deeply, a number out of range): it must not pass as if it had been
    redacted."""


# How deeply arrays and objects may nest. CPython's json parser and encoder
# recurse in C, and in the component (wasmtime's default 512 KiB wasm stack)
# an object nested about 950 deep exhausts the stack: a trap, which drops
# the instance and leaves the response to the filter's `failure` policy.
# Real documents stay far below this; the margin covers a smaller stack.
MAX_DEPTH = 256

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of a JSON text nest more than `limit`
    deep (brackets inside strings do not count). Runs in C-speed passes:
    a Python loop over a megabyte would cost more than the parse."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


def may_hold_a_key(text: str, fields: FrozenSet[str]) -> bool:
    """False only when no key in `fields` can be in the text, so the body
    need not be parsed at all. Without a backslash every JSON string is
    written as it reads; with one, a key may be spelt with escapes
    (`"pass\\u0077ord"`), and only parsing tells."""
    return "\\" in text or any(f'"{field}"' in text for field in fields)


def _refuse_constant(name: str):
    # Python's parser takes NaN and Infinity; JSON has neither.
    raise NotJson(f"{name} is not JSON")


def redact_body(body: bytes, fields: FrozenSet[str], replacement: str) -> Tuple[Optional[bytes], Dict[str, int]]:
    """The body with the value of every key in `fields` replaced, in every
    object at any depth (arrays included), and the count by key; or
    (None, {}) when no key was found and the body need not change.

    Raises NotJson or CannotRedact. The body is re-serialised compactly,
    keys in their order, in the encoding it came in (RFC 8259 says UTF-8;
    older JSON allowed UTF-16 and UTF-32, which json.detect_encoding
    recognises). Repeated keys come back once, as Python keeps the last.
    """
    encoding = json.detect_encoding(body)
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as e:
        raise NotJson(f"not {encoding}: {e.reason} at byte {e.start}") from None
    if not may_hold_a_key(text, fields):
        return None, {}
    if nests_deeper_than(text, MAX_DEPTH):
        raise CannotRedact(f"nested more than {MAX_DEPTH} deep")

    counts: Dict[str, int] = {}

    # The parser calls this for every object, innermost first, so one pass
    # redacts at any depth; the key lookup is a set intersection in C. A key
    # inside a value that is itself replaced is counted too.
    def redact_object(obj: dict) -> dict:
        for key in fields.intersection(obj):
            obj[key] = replacement
            counts[key] = counts.get(key, 0) + 1
        return obj

    try:
        document = json.loads(text, object_hook=redact_object, parse_constant=_refuse_constant)
    except NotJson:
        raise
    except json.JSONDecodeError as e:
        raise NotJson(str(e)) from None
    except RecursionError:
        raise CannotRedact("nested too deeply to parse") from None
    except ValueError as e:
        # What is left is JSON Python will not hold, such as an integer of
        # more than 4300 digits.
        raise CannotRedact(str(e)) from None
    if not counts:
        return None, counts

    try:
        out = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise CannotRedact("nested too deeply to write back") from None
    except ValueError as e:
        # A number such as 1e400 parses to infinity, which JSON cannot say.
        raise CannotRedact(str(e)) from None
    try:
        return out.encode(encoding), counts
    except UnicodeEncodeError:
        # A lone surrogate from a `\ud800` escape cannot be encoded raw;
        # escaped, as it came, it can.
        return json.dumps(document, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode(encoding), counts
