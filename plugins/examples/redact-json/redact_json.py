"""Replaces the values of configured keys in JSON responses (see README.md).

A gateway:filter@0.2.0 filter: it asks for the response body in
`configure`, and the decisions live in redaction.py, which plain Python
can test.
"""
import json
from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.host import LogLevel, MetricKind
from wit_world.imports.types import (
    Action,
    Action_Continue,
    Action_Respond,
    BodyError,
    BodyLimit,
    Needs,
    OverLimit_Pass,
    OverLimit_Refuse,
    Reply,
)

import redaction

# Module state: an instance is configured once and then serves requests,
# whichever Filter object the runtime calls. Metric handles belong to the
# instance that declared them, so each instance declares its own.
settings: Optional[redaction.Settings] = None
fields: frozenset = frozenset()
redactions_metric = 0

REFUSAL = Reply(
    redaction.REFUSE_STATUS,
    [("content-type", b"application/json")],
    json.dumps({"error": "response_not_redacted"}).encode(),
)

# Headers that vouch for the upstream's exact bytes, which a redacted
# body no longer is.
DIGEST_HEADERS = ("content-md5", "digest", "content-digest", "repr-digest")


def log(level: LogLevel, build_message) -> None:
    # Messages are built only when the line would be written: the body
    # paths run on every JSON response.
    if host.log_enabled(level):
        host.log(level, build_message())


def not_redacted(why: str) -> Action:
    """A JSON response the filter could not redact: refused, or passed
    unchanged, as `over_limit` says."""
    if settings is not None and settings.over_limit == "pass":
        log(LogLevel.DEBUG, lambda: f"passing a JSON response unredacted: {why}")
        return Action_Continue()
    log(LogLevel.WARN, lambda: f"refusing a JSON response ({redaction.REFUSE_STATUS}) it cannot redact: {why}")
    return Action_Respond(REFUSAL)


class Filter(exports.Filter):
    def configure(self, config: str) -> Needs:
        global settings, fields, redactions_metric
        try:
            parsed = redaction.parse_settings(config)
        except redaction.ConfigError as e:
            raise Err(str(e))
        try:
            redactions_metric = host.declare_metric(MetricKind.COUNTER, "redactions", ["field"])
        except Err as e:
            raise Err(f"declaring the redactions metric: {e.value}")
        settings, fields = parsed, parsed.field_set
        for field in parsed.fields:  # every series at zero, before any traffic
            host.record_metric(redactions_metric, [field], 0.0)
        over_limit = OverLimit_Refuse(redaction.REFUSE_STATUS) if parsed.over_limit == "refuse" else OverLimit_Pass()
        return Needs(request_body=None, response_body=BodyLimit(parsed.max_body_bytes, over_limit))

    def on_request(self, req) -> Action:
        # The gateway does not decode content-encoding, and without an
        # Accept-Encoding any coding is acceptable (RFC 9110, 12.5.3), so
        # ask for identity outright rather than only dropping the header.
        try:
            req.set_header("accept-encoding", b"identity")
        except Err:
            # Refused (the request is at its header limits): dropping the
            # header is the next best thing, and never refused.
            req.remove_header("accept-encoding")
        # A byte range of a JSON document is not JSON, so it would pass
        # unredacted; ask for the whole document instead.
        req.remove_header("range")
        req.remove_header("if-range")
        return Action_Continue()

    def on_response(self, req, resp) -> Action:
        if not redaction.is_json_media_type(resp.header("content-type")):
            return Action_Continue()
        if resp.status() == 206:
            return not_redacted("a partial (206) body")
        coding = resp.header("content-encoding")
        if not redaction.is_identity_coding(coding):
            return not_redacted(f"content-encoding {coding.decode('latin-1')!r}, which the gateway does not decode")

        try:
            body = resp.body()
        except Err as e:
            if e.value == BodyError.TOO_LARGE:
                return not_redacted(f"the body is over {settings.max_body_bytes} bytes")
            return not_redacted(f"its body cannot be read ({e.value.name.lower().replace('_', '-')})")
        if not body:  # HEAD, 204, 304: nothing to redact, nothing to log
            return Action_Continue()

        try:
            redacted, counts = redaction.redact_body(body, fields, settings.replacement)
        except redaction.NotJson as e:
            log(LogLevel.DEBUG, lambda: f"passing a body that is not valid JSON unchanged: {e}")
            return Action_Continue()
        except redaction.CannotRedact as e:
            return not_redacted(str(e))
        if redacted is None:
            return Action_Continue()

        try:
            resp.set_body(redacted)
        except Err as e:
            # Typically a replacement longer than the values it replaced
            # pushed the body past the limit.
            return not_redacted(f"the redacted body cannot be set ({e.value.name.lower().replace('_', '-')}, {len(redacted)} bytes)")
        for name in DIGEST_HEADERS:
            resp.remove_header(name)
        for field, count in counts.items():
            host.record_metric(redactions_metric, [field], float(count))
        return Action_Continue()
