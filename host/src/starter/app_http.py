"""A Gatehouse route handler of the standard wasi:http/proxy world, in
Python (componentize-py).

The gateway hands `handle` the request as the route's service would get it:
the verified caller in `x-user-id` / `x-user-tier` (absent on public routes;
whatever a client sent there is gone), `x-request-id`, `x-forwarded-*`. The
route's `[route.settings]` are the environment. Every request runs on a
fresh instance: module-level work is paid per request too.
"""

import json

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import environment, outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        headers = request.headers()

        def header(name):
            values = headers.get(name)
            return values[0].decode() if values else None

        # Read per request: module-level code runs once, when the component is built.
        settings = dict(environment.get_environment())
        user = header("x-user-id")
        greeting = settings.get("greeting", "hello")
        body = {
            "message": f"{greeting}, {user or 'stranger'}",
            "user_id": user,
            "tier": header("x-user-tier"),
            "path": request.path_with_query(),
            "request_id": header("x-request-id"),
        }
        # `lookup = "http://<service>/<path>"` in the route's settings: GET it
        # and pass on what came back.
        lookup = settings.get("lookup")
        if lookup:
            body["lookup"] = look_up(lookup)
        respond(response_out, 200, json.dumps(body).encode())


def respond(response_out, status, body):
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with outgoing.write() as stream:
        for start in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[start : start + 4096])
    OutgoingBody.finish(outgoing, None)


def look_up(url):
    """GETs `http://<service>/<path>`. The gateway sends it to that service
    with the verified caller's identity headers if the route may call it (its
    own service, or one in its `calls`); anything else fails with
    ErrorCode_HttpRequestDenied."""
    authority, _, path = url.removeprefix("http://").partition("/")
    request = OutgoingRequest(Fields())
    request.set_scheme(Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query("/" + path)
    future = outgoing_handler.handle(request, None)
    with future.subscribe() as ready:
        ready.block()
    answer = future.get()
    if answer is None or isinstance(answer, Err) or isinstance(answer.value, Err):
        return {"error": repr(answer.value.value if answer is not None and isinstance(answer, Ok) else answer)}
    response = answer.value.value
    data = b""
    with response.consume() as incoming:
        with incoming.stream() as stream:
            while True:
                try:
                    data += stream.blocking_read(65536)
                except Err as e:
                    if isinstance(e.value, StreamError_Closed):
                        break
                    raise
    return {"status": response.status(), "body": data.decode(errors="replace")}
