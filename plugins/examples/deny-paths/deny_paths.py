"""Refuses (403) requests whose path is, or lies under, a path on the deny list."""
import json
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Action_Continue, Action_Respond, Reply

# Module state: an instance of the gateway's plugin is configured once and
# then serves requests, whichever Filter object the runtime calls.
deny: list[str] = []

class Filter(exports.Filter):
    def configure(self, config: str) -> None:
        global deny
        paths = json.loads(config).get("deny", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
            raise Err("deny-paths: `deny` must be a list of paths starting with /")
        deny = [p.rstrip("/") or "/" for p in paths]
        for prefix in deny:  # every series at zero, before any traffic
            host.counter_add("denied", [("prefix", prefix)], 0.0)

    def on_request(self, req):
        path = req.path()
        for prefix in deny:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                host.counter_add("denied", [("prefix", prefix)], 1.0)
                body = json.dumps({"error": "path_denied", "path": path}).encode()
                return Action_Respond(Reply(403, [("content-type", b"application/json")], body))
        return Action_Continue()

    def on_response(self, req, resp):
        return Action_Continue()
