"""{{name}}: a gateway filter. Requests without the header named by the
`require` setting are answered 403; the others go on, tagged with
`x-{{name}}: seen`."""
import json
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Action_Continue, Action_Respond, Reply

# Module state: an instance is configured once and then serves requests.
required = None


class Filter(exports.Filter):
    def configure(self, config: str) -> None:
        """The filter's `[filters.NAME.config]` table, as JSON. Unknown keys
        are refused, so a typo is reported at load rather than ignored;
        starting the message with "at `KEY`: " has the gateway point at its
        line."""
        global required
        settings = json.loads(config)
        unknown = sorted(set(settings) - {"require"})
        if unknown:
            raise Err(f"at `{unknown[0]}`: {{name}}: unknown setting `{unknown[0]}`")
        required = settings.get("require")

    def on_request(self, req):
        if required is not None and req.header(required) is None:
            body = f"missing header {required}\n".encode()
            return Action_Respond(Reply(403, [("content-type", b"text/plain")], body))
        req.set_header("x-{{name}}", b"seen")
        return Action_Continue()

    def on_response(self, req, resp):
        return Action_Continue()
