// A Gatehouse route handler in JavaScript (componentize-js). `handle` gets
// the caller the gateway verified (undefined on public routes), facts about
// the request, and the request; it returns { tag: 'respond', val: response }
// or { tag: 'forward', val: request }.
//
// `fetch` works for the services the route may call, by name:
// `fetch('http://user-service/api/v1/users/42')` goes to user-service when
// it is the route's service or listed in its `calls`, with the verified
// identity headers; anything else fails with HTTP-request-denied.
//
// Every request runs on a fresh instance: nothing kept in a variable
// survives to the next request.
import { get } from 'gatehouse:plugin/config@0.1.0';

const encoder = new TextEncoder();

export const handler = {
  async handle(caller, info, request) {
    const greeting = get('greeting') ?? 'hello';
    const answer = {
      message: `${greeting}, ${caller ? caller.userId : 'stranger'}`,
      user_id: caller ? caller.userId : null,
      tier: caller?.tier ?? null,
      claims: Object.fromEntries((caller?.claims ?? []).map(([name, json]) => [name, JSON.parse(json)])),
      path: request.pathWithQuery,
      request_id: info.requestId,
    };
    // `lookup = "http://<service>/<path>"` in the route's settings: fetch it
    // and pass on what came back.
    const lookup = get('lookup');
    if (lookup) {
      try {
        const resp = await fetch(lookup);
        answer.lookup = { status: resp.status, body: await resp.text() };
      } catch (e) {
        answer.lookup = { error: String(e) };
      }
    }
    return {
      tag: 'respond',
      val: {
        status: 200,
        headers: [['content-type', 'application/json']],
        body: encoder.encode(JSON.stringify(answer)),
      },
    };
  },
};
