/**
 * SessionService (login with `POST Sessions` → 201, `X-Auth-Token` and `Location`; logout with `DELETE`
 * of the session) and a read-only AccountService (accounts are managed with `clonebox user`).
 */
import type { Context, Hono } from 'hono';
import { listAccounts } from '../accounts.js';
import type { Session } from '../auth.js';
import type { Env } from '../context.js';
import { badRequest, notFound, RedfishError } from '../errors.js';
import { checkProps, collection, json, need, readObject, resource } from '../http.js';
import { SESSION_TIMEOUT_S } from '../limits.js';
import { baseMessage } from '../messages.js';
import { sourceAddress, unauthorized } from '../middleware.js';
import { ACCOUNTS, ROOT, SESSIONS } from '../uris.js';

function sessionView(s: Session): Record<string, unknown> {
  return {
    '@odata.type': '#Session.v1_7_0.Session',
    '@odata.id': `${SESSIONS}/${s.id}`,
    Id: s.id,
    Name: 'User Session',
    UserName: s.user,
    SessionType: 'Redfish',
    CreatedTime: new Date(s.created).toISOString(),
    // A token is returned once, in the header of the login response; a GET never shows it.
    Token: null,
  };
}

function visible(c: Context<Env>, s: Session): boolean {
  const p = c.get('principal');
  return p.role === 'Administrator' || p.user === s.user;
}

export function sessionRoutes(app: Hono<Env>): void {
  resource(app, `${ROOT}/SessionService`, {
    GET: () =>
      json({
        '@odata.type': '#SessionService.v1_1_9.SessionService',
        '@odata.id': `${ROOT}/SessionService`,
        Id: 'SessionService',
        Name: 'Session Service',
        ServiceEnabled: true,
        SessionTimeout: SESSION_TIMEOUT_S,
        Sessions: { '@odata.id': SESSIONS },
      }),
  });
  resource(app, SESSIONS, {
    GET: (c) => {
      const { auth } = c.get('service');
      const ids = [...auth.sessions.values()].filter((s) => visible(c, s)).map((s) => `${SESSIONS}/${s.id}`);
      return json(collection(SESSIONS, '#SessionCollection.SessionCollection', 'Session Collection', ids));
    },
    POST: async (c) => {
      const { auth, throttle } = c.get('service');
      const addr = sourceAddress(c);
      const wait = throttle.blockedFor(addr);
      if (wait > 0) throw new RedfishError(429, [baseMessage('ServiceTemporarilyUnavailable', [wait])], { 'Retry-After': String(wait) });
      const body = await readObject(c);
      checkProps(body, { UserName: 'string', Password: 'string' });
      if (typeof body.UserName !== 'string') throw badRequest(baseMessage('PropertyMissing', ['UserName']));
      if (typeof body.Password !== 'string') throw badRequest(baseMessage('PropertyMissing', ['Password']));
      const a = await auth.login(body.UserName, body.Password);
      if (!a) {
        throttle.fail(addr);
        throw unauthorized();
      }
      const s = auth.startSession(a);
      const uri = `${SESSIONS}/${s.id}`;
      return json(sessionView(s), 201, { 'X-Auth-Token': s.token, Location: uri });
    },
  });
  resource(app, `${SESSIONS}/:id`, {
    GET: (c) => {
      const s = c.get('service').auth.sessions.get(c.req.param('id') ?? '');
      if (!s || !visible(c, s)) throw notFound('Session', c.req.param('id') ?? '');
      return json(sessionView(s));
    },
    DELETE: (c) => {
      const { auth } = c.get('service');
      const s = auth.sessions.get(c.req.param('id') ?? '');
      if (!s || !visible(c, s)) throw notFound('Session', c.req.param('id') ?? '');
      auth.end(s.id);
      return new Response(null, { status: 204 });
    },
  });
  resource(app, `${ROOT}/AccountService`, {
    GET: () =>
      json({
        '@odata.type': '#AccountService.v1_15_0.AccountService',
        '@odata.id': `${ROOT}/AccountService`,
        Id: 'AccountService',
        Name: 'Account Service',
        Description: 'Accounts are managed on the service host with `clonebox user add|list|remove|passwd`.',
        ServiceEnabled: true,
        Accounts: { '@odata.id': ACCOUNTS },
      }),
  });
  resource(app, ACCOUNTS, {
    GET: async (c) => {
      need(c, 'Administrator');
      const list = await listAccounts(c.get('service').cb.home);
      return json(
        collection(
          ACCOUNTS,
          '#ManagerAccountCollection.ManagerAccountCollection',
          'Accounts Collection',
          list.map((a) => `${ACCOUNTS}/${a.name}`),
        ),
      );
    },
  });
  resource(app, `${ACCOUNTS}/:id`, {
    GET: async (c) => {
      const id = c.req.param('id') ?? '';
      const p = c.get('principal');
      if (p.user !== id) need(c, 'Administrator');
      const a = (await listAccounts(c.get('service').cb.home)).find((x) => x.name === id);
      if (!a) throw notFound('ManagerAccount', id);
      return json({
        '@odata.type': '#ManagerAccount.v1_12_0.ManagerAccount',
        '@odata.id': `${ACCOUNTS}/${a.name}`,
        Id: a.name,
        Name: 'User Account',
        UserName: a.name,
        RoleId: a.role,
        Enabled: true,
        Password: null,
      });
    },
  });
}
