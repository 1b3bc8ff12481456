"""Test filter: prints each path it sees to standard output, and raises on
paths with "raise" in them, so the tests can find both in the gateway's log."""
from wit_world import exports
from wit_world.imports.types import Action_Continue


def refuse(path: str) -> None:
    raise ValueError(f"raise-py refuses {path}")


class Filter(exports.Filter):
    def configure(self, config: str) -> None:
        pass

    def on_request(self, req):
        path = req.path()
        print(f"raise-py saw {path}")
        if "raise" in path:
            refuse(path)
        return Action_Continue()

    def on_response(self, req, resp):
        return Action_Continue()
