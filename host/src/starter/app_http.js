// A Gatehouse route handler of the standard wasi:http/proxy world, in
// JavaScript (componentize-js): a `fetch` event handler.
//
// The gateway hands it the request as the route's service would get it: the
// verified caller in `x-user-id` / `x-user-tier` (absent on public routes;
// whatever a client sent there is gone), `x-request-id`, `x-forwarded-*`.
// The route's `[route.settings]` are the environment. `fetch` reaches a
// service the route may call, by name (`http://user-service/...`), with the
// verified identity; anything else fails with HTTP-request-denied.
//
// Every request runs on a fresh instance; top-level code runs once, when the
// component is built, so read the environment inside the handler.
import { getEnvironment } from 'wasi:cli/environment@0.2.10';

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const settings = Object.fromEntries(getEnvironment());
  const user = request.headers.get('x-user-id');
  const url = new URL(request.url);
  const answer = {
    message: `${settings.greeting ?? 'hello'}, ${user ?? 'stranger'}`,
    user_id: user,
    tier: request.headers.get('x-user-tier'),
    path: url.pathname + url.search,
    request_id: request.headers.get('x-request-id'),
  };
  // `lookup = "http://<service>/<path>"` in the route's settings: fetch it
  // and pass on what came back.
  if (settings.lookup) {
    try {
      const resp = await fetch(settings.lookup);
      answer.lookup = { status: resp.status, body: await resp.text() };
    } catch (e) {
      answer.lookup = { error: String(e) };
    }
  }
  return new Response(JSON.stringify(answer), {
    headers: { 'content-type': 'application/json' },
  });
}
