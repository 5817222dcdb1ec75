"""A Gatehouse route handler in Python (componentize-py, world route-handler).

`handle` gets the caller the gateway verified (None on public routes), facts
about the request, and the request; it returns Action_Respond (answer the
client) or Action_Forward (send a request to the route's service). Every
request runs on a fresh instance: module-level work is paid per request too.
"""

import json

from wit_world import exports
from wit_world.imports import config, log, upstream
from wit_world.imports.types import Action_Respond, Level, Request, Response
from componentize_py_types import Err


class Handler(exports.Handler):
    def handle(self, caller, info, request):
        greeting = config.get("greeting") or "hello"
        who = caller.user_id if caller is not None else "stranger"
        if caller is not None:
            log.write(Level.DEBUG, "greeted " + caller.user_id)
        body = {
            "message": f"{greeting}, {who}",
            "user_id": caller.user_id if caller is not None else None,
            "tier": caller.tier if caller is not None else None,
            "path": request.path_with_query,
            "request_id": info.request_id,
        }
        # `lookup = "http://<service>/<path>"` in the route's settings: GET it
        # and pass on what came back.
        lookup = config.get("lookup")
        if lookup:
            body["lookup"] = look_up(lookup)
        return Action_Respond(
            Response(
                status=200,
                headers=[("content-type", "application/json")],
                body=json.dumps(body).encode(),
            )
        )


def look_up(url):
    """GETs `http://<service>/<path>` with upstream.send. The gateway sends it
    to that service with the verified caller's identity headers, if the route
    may call it (its own service, or one in its `calls`); otherwise send
    raises Err with the reason (SendError_NotAllowed)."""
    service, _, path = url.removeprefix("http://").partition("/")
    request = Request(method="GET", path_with_query="/" + path, headers=[], body=b"")
    try:
        response = upstream.send(service, request)
    except Err as e:
        return {"error": repr(e.value)}
    return {"status": response.status, "body": response.body.decode(errors="replace")}
