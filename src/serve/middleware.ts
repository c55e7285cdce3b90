/**
 * What runs before every route: `OData-Version` (4.0 on every response; a request asking for another
 * gets 412), and authentication (X-Auth-Token, else HTTP Basic; 401 with `WWW-Authenticate` and a
 * Redfish body), with failed Basic logins throttled per source address like session logins.
 */
import type { HttpBindings } from '@hono/node-server';
import type { Context, MiddlewareHandler } from 'hono';
import type { Env } from './context.js';
import { RedfishError } from './errors.js';
import { PUBLIC_PATHS } from './http.js';
import { baseMessage } from './messages.js';
import { SESSIONS } from './uris.js';

export function unauthorized(): RedfishError {
  return new RedfishError(401, [baseMessage('NoValidSession')], { 'WWW-Authenticate': 'Basic realm="clonebox", charset="UTF-8"' });
}

/** The peer's address (in-process requests made with app.request() have none). */
export function sourceAddress(c: Context<Env>): string {
  const env = c.env as Partial<HttpBindings> | undefined;
  return env?.incoming?.socket?.remoteAddress ?? 'in-process';
}

export function odataVersion(): MiddlewareHandler<Env> {
  return async (c, next) => {
    const asked = c.req.header('OData-Version');
    if (asked !== undefined && asked.trim() !== '4.0') {
      throw new RedfishError(412, [baseMessage('HeaderInvalid', [`OData-Version: ${asked.slice(0, 32)}`])]);
    }
    await next();
  };
}

export function authenticate(): MiddlewareHandler<Env> {
  return async (c, next) => {
    const path = c.req.path.replace(/\/+$/, '') || '/';
    if (PUBLIC_PATHS.has(path) || (c.req.method === 'POST' && path === SESSIONS)) return next();
    const { auth, throttle } = c.get('service');
    const token = c.req.header('X-Auth-Token');
    if (token !== undefined) {
      const p = await auth.token(token);
      if (!p) throw unauthorized();
      c.set('principal', p);
      return next();
    }
    const basic = c.req.header('Authorization');
    if (basic === undefined) throw unauthorized();
    const addr = sourceAddress(c);
    const wait = throttle.blockedFor(addr);
    if (wait > 0) throw new RedfishError(429, [baseMessage('ServiceTemporarilyUnavailable', [wait])], { 'Retry-After': String(wait) });
    const p = await auth.basic(basic);
    if (!p) {
      throttle.fail(addr);
      throw unauthorized();
    }
    c.set('principal', p);
    return next();
  };
}
