"""Tests redaction.py with a plain Python (3.11 or later), no gateway:
    python3 -m unittest discover -s plugins/examples/redact-json -p 'test_*.py'
"""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from redaction import (  # noqa: E402
    MAX_DEPTH,
    CannotRedact,
    ConfigError,
    NotJson,
    Settings,
    is_identity_coding,
    is_json_media_type,
    nests_deeper_than,
    parse_settings,
    redact_body,
)

R = "[redacted]"


def config(**settings) -> str:
    return json.dumps(settings)


class ParseSettingsTest(unittest.TestCase):
    def assert_refused(self, config_json: str, message: str):
        with self.assertRaises(ConfigError) as caught:
            parse_settings(config_json)
        self.assertEqual(str(caught.exception), message)

    def test_defaults(self):
        self.assertEqual(
            parse_settings(config(fields=["password"])),
            Settings(("password",), "[redacted]", 1024 * 1024, "refuse"),
        )

    def test_every_setting(self):
        s = parse_settings(config(fields=["a", "b", "a"], replacement="***", max_body_bytes=16 * 1024 * 1024, over_limit="pass"))
        self.assertEqual(s, Settings(("a", "b"), "***", 16 * 1024 * 1024, "pass"))
        self.assertEqual(s.field_set, frozenset({"a", "b"}))

    def test_fields_are_required_and_non_empty(self):
        self.assertRaisesRegex(ConfigError, r"^at `fields`: required", parse_settings, "{}")
        self.assertRaisesRegex(ConfigError, r"^at `fields`: required", parse_settings, "")
        self.assert_refused(config(fields=[]), "at `fields`: must be a non-empty list of strings")
        self.assert_refused(config(fields="password"), "at `fields`: must be a non-empty list of strings")

    def test_each_field_is_a_string_and_says_where(self):
        self.assert_refused(config(fields=["a", 1]), "at `fields[1]`: must be a string")
        self.assert_refused(config(fields=[None]), "at `fields[0]`: must be a string")
        self.assert_refused(config(fields=["a", "b", ""]), "at `fields[2]`: must not be empty")
        self.assertRaisesRegex(ConfigError, r"^at `fields\[0\]`: must be at most 128 bytes", parse_settings, config(fields=["é" * 65]))
        parse_settings(config(fields=["x" * 128]))

    def test_replacement(self):
        self.assert_refused(config(fields=["a"], replacement=None), "at `replacement`: must be a string")
        self.assert_refused(config(fields=["a"], replacement=0), "at `replacement`: must be a string")
        self.assertEqual(parse_settings(config(fields=["a"], replacement="")).replacement, "")

    def test_max_body_bytes_bounds(self):
        message = "at `max_body_bytes`: must be an integer from 1 to 16777216 (16 MiB)"
        for bad in (0, -1, 16 * 1024 * 1024 + 1, 1.5, "1MiB", True):
            with self.subTest(bad=bad):
                self.assert_refused(config(fields=["a"], max_body_bytes=bad), message)
        self.assertEqual(parse_settings(config(fields=["a"], max_body_bytes=1)).max_body_bytes, 1)

    def test_over_limit(self):
        self.assert_refused(config(fields=["a"], over_limit="drop"), 'at `over_limit`: must be "refuse" or "pass"')
        self.assert_refused(config(fields=["a"], over_limit=502), 'at `over_limit`: must be "refuse" or "pass"')

    def test_unknown_setting_is_refused(self):
        # `field` for `fields` would otherwise be ignored silently.
        self.assertRaisesRegex(ConfigError, r"^at `field`: unknown setting", parse_settings, config(field=["a"]))

    def test_config_must_be_a_json_table(self):
        self.assert_refused("[]", "config must be a table")
        self.assertRaisesRegex(ConfigError, r"^config is not JSON", parse_settings, "{")


class MediaTypeTest(unittest.TestCase):
    def test_json_types(self):
        for value in (b"application/json", b"Application/JSON; charset=utf-8", b" application/json ",
                      b"application/problem+json", b"application/vnd.api+json;v=1"):
            with self.subTest(value=value):
                self.assertTrue(is_json_media_type(value))

    def test_other_types(self):
        for value in (None, b"", b"text/html", b"application/jsonp", b"application/json-seq",
                      b"text/plain; note=application/json", b"+json", b"application/+json", b"application/x-ndjson"):
            with self.subTest(value=value):
                self.assertFalse(is_json_media_type(value))

    def test_identity_coding(self):
        for value in (None, b"", b"identity", b"Identity"):
            self.assertTrue(is_identity_coding(value), value)
        for value in (b"gzip", b"br", b"identity, gzip"):
            self.assertFalse(is_identity_coding(value), value)


def redacted(document, fields=("password", "token"), replacement=R):
    """redact_body on a document, decoded back: (document, counts)."""
    out, counts = redact_body(json.dumps(document).encode(), frozenset(fields), replacement)
    return (document if out is None else json.loads(out)), counts


class RedactTest(unittest.TestCase):
    def test_any_depth_and_inside_arrays(self):
        doc, counts = redacted({
            "password": "p0",
            "user": {"name": "ann", "password": "p1", "tokens": [{"token": "t1"}, {"token": "t2", "x": [[{"password": 3}]]}]},
            "list": ["password", {"nested": {"password": None}}],
        })
        self.assertEqual(doc, {
            "password": R,
            "user": {"name": "ann", "password": R, "tokens": [{"token": R}, {"token": R, "x": [[{"password": R}]]}]},
            "list": ["password", {"nested": {"password": R}}],
        })
        self.assertEqual(counts, {"password": 4, "token": 2})

    def test_a_redacted_value_is_replaced_whole(self):
        doc, counts = redacted({"secret": {"password": "p", "list": [1, 2]}}, fields=("secret", "password"))
        self.assertEqual(doc, {"secret": R})
        # Objects are redacted innermost first: `password` was replaced
        # before `secret` took the object away, and both count.
        self.assertEqual(counts, {"secret": 1, "password": 1})

    def test_values_and_case_are_not_keys(self):
        doc = {"Password": "kept", "note": "password", "arr": ["password"]}
        self.assertEqual(redacted(doc), (doc, {}))

    def test_top_level_scalars_and_arrays(self):
        self.assertEqual(redacted("password"), ("password", {}))
        self.assertEqual(redacted([{"password": 1}, {"password": 2}]), ([{"password": R}, {"password": R}], {"password": 2}))

    def test_a_key_spelt_with_escapes_is_found(self):
        out, counts = redact_body(b'{"pass\\u0077ord": "x"}', frozenset({"password"}), R)
        self.assertEqual(out, b'{"password":"[redacted]"}')

    def test_nesting_up_to_the_cap(self):
        body = b"[" * (MAX_DEPTH - 1) + b'{"password": 1}' + b"]" * (MAX_DEPTH - 1)
        out, counts = redact_body(body, frozenset({"password"}), R)
        self.assertEqual(counts, {"password": 1})
        deeper = b"[" + body + b"]"
        self.assertRaisesRegex(CannotRedact, "nested more than 256 deep", redact_body, deeper, frozenset({"password"}), R)

    def test_brackets_in_strings_do_not_nest(self):
        body = json.dumps({"password": 1, "s": "[{" * 1000, "t": 'a\\"[[[' * 100}).encode()
        self.assertEqual(redact_body(body, frozenset({"password"}), R)[1], {"password": 1})


class DepthTest(unittest.TestCase):
    def test_depth(self):
        self.assertFalse(nests_deeper_than("[[1]]", 2))
        self.assertTrue(nests_deeper_than("[[1]]", 1))
        self.assertFalse(nests_deeper_than("[]" * 1000, 1))
        self.assertTrue(nests_deeper_than('{"a":' * 5 + "1" + "}" * 5, 4))
        self.assertFalse(nests_deeper_than('["[[[[[", "\\"[[[[", "\\\\", []]', 2))


class RedactBodyTest(unittest.TestCase):
    fields = frozenset({"password", "ssn"})

    def test_redacts_and_serialises_compactly(self):
        body = b'{"user": {"name": "Zo\xc3\xab", "password": "hunter2"}, "items": [{"ssn": "123"}, 1.5, true, null]}'
        out, counts = redact_body(body, self.fields, R)
        self.assertEqual(out, '{"user":{"name":"Zoë","password":"[redacted]"},"items":[{"ssn":"[redacted]"},1.5,true,null]}'.encode())
        self.assertEqual(counts, {"password": 1, "ssn": 1})

    def test_nothing_to_redact_leaves_the_body_alone(self):
        self.assertEqual(redact_body(b'{"a": [1, 2]}', self.fields, R), (None, {}))
        self.assertEqual(redact_body(b'{"a": "\\n"}', self.fields, R), (None, {}))
        self.assertEqual(redact_body(b'"password"', self.fields, R), (None, {}))

    def test_a_body_without_the_keys_is_not_parsed(self):
        # Neither invalid nor too deep matters when no key can be there.
        self.assertEqual(redact_body(b"{not json", self.fields, R), (None, {}))
        self.assertEqual(redact_body(b"[" * 10000, self.fields, R), (None, {}))

    def test_replacement_is_a_json_string(self):
        out, _ = redact_body(b'{"password": 1}', self.fields, 'a "quoted" \\ value')
        self.assertEqual(json.loads(out), {"password": 'a "quoted" \\ value'})

    def test_keeps_order_numbers_and_escapes(self):
        out, _ = redact_body(b'{"z": 1, "password": 2, "a": 12345678901234567890, "f": 0.1, "s": "\\u2028\\ud83d\\ude00"}', self.fields, R)
        self.assertEqual(out, '{"z":1,"password":"[redacted]","a":12345678901234567890,"f":0.1,"s":"\u2028\U0001F600"}'.encode())

    def test_lone_surrogate_escape_survives(self):
        out, _ = redact_body(b'{"password": 1, "s": "\\ud800"}', self.fields, R)
        self.assertEqual(out, b'{"password":"[redacted]","s":"\\ud800"}')

    def test_utf16_comes_back_utf16(self):
        body = '{"password": "x"}'.encode("utf-16-le")
        out, _ = redact_body(body, self.fields, R)
        self.assertEqual(out.decode("utf-16-le"), '{"password":"[redacted]"}')

    def test_utf8_bom_is_kept(self):
        out, _ = redact_body(b'\xef\xbb\xbf{"password": "x"}', self.fields, R)
        self.assertEqual(out, b'\xef\xbb\xbf{"password":"[redacted]"}')

    def test_not_json(self):
        for body in (b'{"password"', b'<html>"password"', b'{"password": 1} trailing', b'["password", NaN]',
                     b'{"password": Infinity}', b'{"password": "\xff"}', b"{'password': 1, \"password\": 2}",
                     b'{"x": "\\q", "password": 1}'):
            with self.subTest(body=body):
                self.assertRaises(NotJson, redact_body, body, self.fields, R)

    def test_json_too_deep_cannot_pass_as_redacted(self):
        depth = 100_000
        body = b'{"a":' * depth + b'{"password":"x"}' + b"}" * depth
        self.assertRaises(CannotRedact, redact_body, body, self.fields, R)

    def test_numbers_python_cannot_write_back(self):
        self.assertRaises(CannotRedact, redact_body, b'{"password": 1, "n": 1e400}', self.fields, R)
        self.assertRaises(CannotRedact, redact_body, b'{"password": 1, "n": ' + b"9" * 5000 + b"}", self.fields, R)

    def test_duplicate_keys_come_back_once_redacted(self):
        out, counts = redact_body(b'{"password": "a", "password": "b"}', self.fields, R)
        self.assertEqual((out, counts), (b'{"password":"[redacted]"}', {"password": 1}))


if __name__ == "__main__":
    unittest.main()
