/**
 * The Redfish service in-process (`app.request()`, no socket): every endpoint, the task flow, the
 * transient states, the SSE stream, and every refusal with its status, its Redfish error body, and a
 * home left unchanged. Images are checked with qemu-img where content matters.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Clonebox } from '../src/index.js';
import { addAccount, createRedfishApp, type RedfishApp, removeAccount } from '../src/serve/index.js';
import { resolveHome } from '../src/store/home.js';
import { lockVm } from '../src/store/registry.js';
import { CliHome } from './helpers/cli.js';
import { qemuCheck, qemuCompare, qemuIo, qemuRaw } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

const PW = 'correct horse battery';
const SNAPS = '/redfish/v1/Systems/web/Oem/HawkFish/Snapshots';

let home: string;
let cb: Clonebox;
let svc: RedfishApp;
let clock = Date.now();

interface Opts {
  user?: string | null;
  body?: unknown;
  raw?: string;
  headers?: Record<string, string>;
  address?: string;
}

function basic(user: string, pw = PW): string {
  return `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}`;
}

async function req(method: string, url: string, o: Opts = {}): Promise<Response> {
  const headers: Record<string, string> = { ...(o.headers ?? {}) };
  const user = o.user === undefined ? 'admin' : o.user;
  if (user !== null && headers.Authorization === undefined && headers['X-Auth-Token'] === undefined) headers.Authorization = basic(user);
  let body: string | undefined = o.raw;
  if (o.body !== undefined) body = JSON.stringify(o.body);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  // The peer address the server would see (rate limits are per address).
  const env = { incoming: { socket: { remoteAddress: o.address ?? '10.0.0.1' } } };
  return svc.app.request(url, { method, headers, ...(body !== undefined ? { body } : {}) }, env);
}

async function getJson<T = Record<string, unknown>>(url: string, o: Opts = {}): Promise<T> {
  const r = await req('GET', url, o);
  expect(r.status, `GET ${url}`).toBe(200);
  return (await r.json()) as T;
}

interface ErrorBody {
  error: {
    code: string;
    message: string;
    '@Message.ExtendedInfo': { MessageId: string; Message: string; MessageSeverity: string; Severity: string; Resolution: string }[];
  };
}

/** A Redfish error reply: status, envelope, and the first message's id ends with `id`. */
async function expectError(r: Response, status: number, id: string): Promise<ErrorBody> {
  expect(r.status).toBe(status);
  expect(r.headers.get('OData-Version')).toBe('4.0');
  const b = (await r.json()) as ErrorBody;
  const info = b.error['@Message.ExtendedInfo'];
  expect(info.length).toBeGreaterThan(0);
  expect(b.error.code).toBe(info[0]!.MessageId);
  expect(info[0]!.MessageId.endsWith(`.${id}`), `${info[0]!.MessageId} is not ${id}`).toBe(true);
  for (const m of info) {
    expect(typeof m.Message).toBe('string');
    expect(typeof m.Resolution).toBe('string');
    expect(m.Severity).toBe(m.MessageSeverity);
  }
  return b;
}

/** Follows a task monitor to the final response (the task runs in this process; bounded). */
async function finish(accepted: Response, user = 'admin'): Promise<Response> {
  expect(accepted.status).toBe(202);
  expect(await accepted.text()).toBe('');
  expect(accepted.headers.get('Retry-After')).toBeNull();
  const mon = accepted.headers.get('Location');
  expect(mon).toMatch(/^\/redfish\/v1\/TaskService\/TaskMonitors\/[0-9a-f]+$/);
  for (let i = 0; i < 3000; i++) {
    const r = await req('GET', mon!, { user });
    if (r.status !== 202) return r;
    const t = (await r.json()) as { TaskState: string };
    expect(['New', 'Running']).toContain(t.TaskState);
    await new Promise((res) => setTimeout(res, 10));
  }
  throw new Error(`task ${mon} did not finish`);
}

/** Everything the snapshot state of the home consists of (files, sizes, mtimes, records). */
async function homeState(): Promise<string> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else {
        const st = await stat(p);
        out.push(`${path.relative(home, p)} ${st.size} ${st.mtimeMs}${p.endsWith('.json') ? ` ${await readFile(p, 'utf8')}` : ''}`);
      }
    }
  };
  await walk(path.join(home, 'vms'));
  await walk(path.join(home, 'disks'));
  return out.join('\n');
}

async function create(name: string, extra: Record<string, unknown> = {}, user = 'admin'): Promise<Record<string, unknown>> {
  const r = await finish(await req('POST', SNAPS, { user, body: { Name: name, ...extra } }), user);
  expect(r.status).toBe(201);
  expect(r.headers.get('Location')).toBe(`${SNAPS}/${name}`);
  return (await r.json()) as Record<string, unknown>;
}

const disk = () => path.join(home, 'disks', 'web', 'web.qcow2');

beforeAll(async () => {
  home = await makeTempDir('clonebox-serve-');
  cb = await Clonebox.open({ home });
  await cb.vms.create('web', { size: '16M' });
  await addAccount(home, 'admin', 'Administrator', PW);
  await addAccount(home, 'op', 'Operator', PW);
  await addAccount(home, 'ro', 'ReadOnly', PW);
  svc = await createRedfishApp(cb, { now: () => clock });
});

afterAll(async () => {
  await svc?.close();
  await cb?.close();
});

describe('service root and protocol', () => {
  it('serves the root documents without authentication, with OData-Version on every response', async () => {
    expect(await getJson('/redfish', { user: null })).toEqual({ v1: '/redfish/v1/' });
    const root = await getJson('/redfish/v1/', { user: null });
    for (const k of ['Id', 'Name', 'RedfishVersion', 'UUID', 'Systems', 'SessionService', 'Tasks', 'EventService']) expect(root).toHaveProperty(k);
    expect(root).not.toHaveProperty('TaskService');
    expect(root.Tasks).toEqual({ '@odata.id': '/redfish/v1/TaskService' });
    expect((root.Links as Record<string, unknown>).Sessions).toEqual({ '@odata.id': '/redfish/v1/SessionService/Sessions' });
    expect((await req('GET', '/redfish/v1', { user: null })).status).toBe(200);
    const odata = await getJson<{ value: unknown[] }>('/redfish/v1/odata', { user: null });
    expect(odata.value.length).toBeGreaterThan(3);
    const meta = await req('GET', '/redfish/v1/$metadata', { user: null });
    expect(meta.status).toBe(200);
    expect(meta.headers.get('OData-Version')).toBe('4.0');
    expect(await meta.text()).toContain('<edmx:Edmx');
  });

  it('refuses an unsupported OData-Version with 412', async () => {
    await expectError(await req('GET', '/redfish/v1/', { user: null, headers: { 'OData-Version': '5.0' } }), 412, 'HeaderInvalid');
    expect((await req('GET', '/redfish/v1/', { user: null, headers: { 'OData-Version': '4.0' } })).status).toBe(200);
  });

  it('answers 404 for unknown URIs and 405 with Allow for unsupported methods', async () => {
    await expectError(await req('GET', '/redfish/v1/Nope'), 404, 'ResourceMissingAtURI');
    const r = await req('PUT', '/redfish/v1/Systems');
    expect(r.headers.get('Allow')).toBe('GET, HEAD');
    await expectError(r, 405, 'OperationNotAllowed');
    const d = await req('DELETE', SNAPS);
    expect(d.headers.get('Allow')).toBe('GET, POST, HEAD');
    await expectError(d, 405, 'OperationNotAllowed');
  });
});

describe('authentication and roles', () => {
  it('answers 401 with WWW-Authenticate and a Redfish body without or with wrong credentials', async () => {
    const none = await req('GET', '/redfish/v1/Systems', { user: null });
    expect(none.headers.get('WWW-Authenticate')).toMatch(/^Basic /);
    await expectError(none, 401, 'NoValidSession');
    await expectError(
      await req('GET', '/redfish/v1/Systems', { headers: { Authorization: basic('admin', 'wrong password') }, address: '10.9.0.1' }),
      401,
      'NoValidSession',
    );
    await expectError(await req('GET', '/redfish/v1/Systems', { headers: { Authorization: basic('nobody') }, address: '10.9.0.1' }), 401, 'NoValidSession');
    await expectError(await req('GET', '/redfish/v1/Systems', { headers: { 'X-Auth-Token': 'not-a-token' } }), 401, 'NoValidSession');
  });

  it('logs in with a session (201, X-Auth-Token, Location), uses the token, and logs out with DELETE', async () => {
    const r = await req('POST', '/redfish/v1/SessionService/Sessions', { user: null, body: { UserName: 'op', Password: PW } });
    expect(r.status).toBe(201);
    const token = r.headers.get('X-Auth-Token');
    const loc = r.headers.get('Location');
    expect(token).toBeTruthy();
    expect(loc).toMatch(/^\/redfish\/v1\/SessionService\/Sessions\/[0-9a-f]+$/);
    const body = (await r.json()) as Record<string, unknown>;
    expect(body['@odata.id']).toBe(loc);
    expect(body.UserName).toBe('op');
    expect(body.Token).toBeNull();
    const sys = await req('GET', '/redfish/v1/Systems', { headers: { 'X-Auth-Token': token! } });
    expect(sys.status).toBe(200);
    expect((await getJson(loc!, { headers: { 'X-Auth-Token': token! } })).UserName).toBe('op');
    expect((await req('DELETE', loc!, { headers: { 'X-Auth-Token': token! } })).status).toBe(204);
    await expectError(await req('GET', '/redfish/v1/Systems', { headers: { 'X-Auth-Token': token! } }), 401, 'NoValidSession');
  });

  it('expires a session token after the session timeout', async () => {
    const r = await req('POST', '/redfish/v1/SessionService/Sessions', { user: null, body: { UserName: 'ro', Password: PW } });
    const token = r.headers.get('X-Auth-Token')!;
    expect((await req('GET', '/redfish/v1/Systems', { headers: { 'X-Auth-Token': token } })).status).toBe(200);
    const timeout = ((await getJson('/redfish/v1/SessionService')) as { SessionTimeout: number }).SessionTimeout;
    clock += timeout * 1000 + 1;
    await expectError(await req('GET', '/redfish/v1/Systems', { headers: { 'X-Auth-Token': token } }), 401, 'NoValidSession');
  });

  it('ends the sessions of a removed user', async () => {
    await addAccount(home, 'temp', 'Operator', PW);
    clock += 2000; // the accounts file is re-checked at most once a second
    const r = await req('POST', '/redfish/v1/SessionService/Sessions', { user: null, body: { UserName: 'temp', Password: PW } });
    expect(r.status).toBe(201);
    const token = r.headers.get('X-Auth-Token')!;
    await removeAccount(home, 'temp');
    clock += 2000;
    await expectError(await req('GET', '/redfish/v1/Systems', { headers: { 'X-Auth-Token': token } }), 401, 'NoValidSession');
  });

  it('rate-limits failed logins per source address (429), not other addresses', async () => {
    for (let i = 0; i < 5; i++) {
      const r = await req('POST', '/redfish/v1/SessionService/Sessions', {
        user: null,
        body: { UserName: 'admin', Password: 'nope nope' },
        address: '10.6.6.6',
      });
      await expectError(r, 401, 'NoValidSession');
    }
    const blocked = await req('POST', '/redfish/v1/SessionService/Sessions', { user: null, body: { UserName: 'admin', Password: PW }, address: '10.6.6.6' });
    expect(blocked.headers.get('Retry-After')).toMatch(/^\d+$/);
    await expectError(blocked, 429, 'ServiceTemporarilyUnavailable');
    await expectError(await req('GET', '/redfish/v1/Systems', { address: '10.6.6.6' }), 429, 'ServiceTemporarilyUnavailable');
    expect((await req('GET', '/redfish/v1/Systems', { address: '10.6.6.7' })).status).toBe(200);
    clock += 61_000;
    expect((await req('GET', '/redfish/v1/Systems', { address: '10.6.6.6' })).status).toBe(200);
  });

  it('lets ReadOnly read but not write, and Operator not change limits; nothing changes on disk', async () => {
    const before = await homeState();
    expect((await req('GET', SNAPS, { user: 'ro' })).status).toBe(200);
    await expectError(await req('POST', SNAPS, { user: 'ro', body: { Name: 'nope' } }), 403, 'InsufficientPrivilege');
    await expectError(
      await req('PATCH', '/redfish/v1/Systems/web', { user: 'op', body: { Oem: { HawkFish: { SnapshotLimit: 3 } } } }),
      403,
      'InsufficientPrivilege',
    );
    await expectError(await req('GET', '/redfish/v1/AccountService/Accounts', { user: 'op' }), 403, 'InsufficientPrivilege');
    expect(await homeState()).toBe(before);
  });

  it('lists accounts to an Administrator, never with a hash', async () => {
    const list = await getJson<{ Members: { '@odata.id': string }[] }>('/redfish/v1/AccountService/Accounts');
    expect(list.Members.map((m) => m['@odata.id']).sort()).toEqual(['admin', 'op', 'ro'].map((n) => `/redfish/v1/AccountService/Accounts/${n}`));
    const a = await getJson('/redfish/v1/AccountService/Accounts/op');
    expect(a.RoleId).toBe('Operator');
    expect(JSON.stringify(a)).not.toContain('argon2');
  });
});

describe('systems and snapshots', () => {
  it('lists systems and shows one as a virtual ComputerSystem with its snapshot link', async () => {
    const coll = await getJson<{ Members: { '@odata.id': string }[]; 'Members@odata.count': number }>('/redfish/v1/Systems');
    expect(coll.Members).toEqual([{ '@odata.id': '/redfish/v1/Systems/web' }]);
    expect(coll['Members@odata.count']).toBe(1);
    const sys = await getJson('/redfish/v1/Systems/web');
    expect(sys).toMatchObject({ Id: 'web', Name: 'web', '@odata.id': '/redfish/v1/Systems/web', SystemType: 'Virtual' });
    expect(sys['@odata.type']).toMatch(/^#ComputerSystem\./);
    expect(sys).toHaveProperty('Boot');
    expect(sys).toHaveProperty('Actions');
    expect((sys.Oem as { HawkFish: { Snapshots: unknown } }).HawkFish.Snapshots).toEqual({ '@odata.id': SNAPS });
  });

  it('creates snapshots as tasks: 202 + monitor, 202 + Task while running, then 201 + Location + the snapshot', async () => {
    await qemuIo(disk(), ['write -P 1 0 1M']);
    const ref1 = path.join(home, 'ref1.raw');
    await qemuRaw(disk(), ref1);
    const s1 = await create('s1', { Description: 'first', Tags: ['a', 'b'] });
    expect(s1).toMatchObject({ Id: 's1', Name: 's1', Description: 'first', SnapshotState: 'Ready', Type: 'disk', Current: true, Tags: ['a', 'b'] });
    expect(s1.SizeBytes).toBeGreaterThanOrEqual(1024 * 1024);
    expect(s1.SizeBytes).toBe((await cb.snapshots.show('web', 's1')).size_bytes);
    expect(typeof s1.CreatedTime).toBe('string');
    expect(s1['@odata.etag']).toMatch(/^W\/"/);
    const actions = s1.Actions as Record<string, { target: string }> & { Oem: Record<string, { target: string }> };
    expect(actions['#HawkFishSnapshot.Revert']!.target).toBe(`${SNAPS}/s1/Actions/HawkFishSnapshot.Revert`);
    expect(actions.Oem['#Oem.HawkFish.Snapshot.Revert']!.target).toBe(`${SNAPS}/s1/Actions/Oem.HawkFish.Snapshot.Revert`);
    await qemuIo(disk(), ['write -P 2 1M 1M']);
    // Without a name: a timestamp name as the CLI makes it.
    const auto = await finish(await req('POST', SNAPS, { user: 'op', body: {} }), 'op');
    expect(auto.status).toBe(201);
    const a = (await auto.json()) as { Id: string; Links: { Parent: unknown; Children: unknown[] } };
    expect(a.Id).toMatch(/^snap-\d{8}-\d{6}(-\d+)?$/);
    expect(a.Links.Parent).toEqual({ '@odata.id': `${SNAPS}/s1` });
    const coll = await getJson<{ Members: { '@odata.id': string }[]; 'Members@odata.count': number }>(SNAPS);
    expect(coll.Members.map((m) => m['@odata.id'])).toEqual([`${SNAPS}/${a.Id}`, `${SNAPS}/s1`]);
    expect(coll['Members@odata.count']).toBe(2);
    const s1again = await getJson(`${SNAPS}/s1`);
    expect((s1again.Links as { Children: unknown[] }).Children).toEqual([{ '@odata.id': `${SNAPS}/${a.Id}` }]);
    for (const s of await cb.snapshots.list('web')) for (const d of s.disks) expect((await qemuCheck(d.path)).code).toBe(0);
    expect((await qemuCompare((await cb.snapshots.show('web', 's1')).disks[0]!.path, ref1)).code).toBe(0);
  });

  it('shows Creating during a slow create and Reverting during a revert (the VM lock held meanwhile)', async () => {
    const lock = await lockVm(resolveHome(home), 'web', 'test holds the VM');
    let locked = true;
    try {
      const r = await req('POST', SNAPS, { user: 'op', body: { Name: 'slow', Description: 'waits for the lock' } });
      expect(r.status).toBe(202);
      const during = await getJson(`${SNAPS}/slow`);
      expect(during.SnapshotState).toBe('Creating');
      expect(during.Description).toBe('waits for the lock');
      expect((await getJson<{ Members: { '@odata.id': string }[] }>(SNAPS)).Members[0]).toEqual({ '@odata.id': `${SNAPS}/slow` });
      // New until the task has read the home's event log (a few file reads), then Running while it waits for the lock.
      let task = { TaskState: 'New', '@odata.id': '' };
      for (let i = 0; i < 500 && task.TaskState === 'New'; i++) {
        if (i > 0) await new Promise((res) => setTimeout(res, 10));
        task = (await (await req('GET', r.headers.get('Location')!)).json()) as typeof task;
      }
      expect(task.TaskState).toBe('Running');
      expect((await getJson(task['@odata.id'])).TaskState).toBe('Running');
      const rev = await req('POST', `${SNAPS}/s1/Actions/Oem.HawkFish.Snapshot.Revert`, { user: 'op', body: {} });
      expect(rev.status).toBe(202);
      expect((await getJson(`${SNAPS}/s1`)).SnapshotState).toBe('Reverting');
      await lock.release();
      locked = false;
      expect((await finish(r)).status).toBe(201);
      const done = await finish(rev);
      expect(done.status).toBe(200);
      expect(((await done.json()) as Record<string, unknown>).Current).toBe(true);
      expect((await getJson(`${SNAPS}/s1`)).SnapshotState).toBe('Ready');
      expect((await qemuCompare(disk(), path.join(home, 'ref1.raw'))).code).toBe(0);
    } finally {
      if (locked) await lock.release();
    }
  });

  it('shows snapshots another process made or deleted at the next GET (the cached list follows the records)', async () => {
    const members = async () => (await getJson<{ Members: { '@odata.id': string }[] }>(SNAPS)).Members.map((m) => m['@odata.id']);
    const first = await members();
    expect(await members()).toEqual(first);
    await new CliHome(home).ok(['snapshot', 'create', 'web', '--name', 'by-cli']);
    expect(await members()).toEqual([`${SNAPS}/by-cli`, ...first]);
    expect((await getJson(`${SNAPS}/by-cli`)).Current).toBe(true);
    await new CliHome(home).ok(['snapshot', 'delete', 'web', '--name', 'by-cli']);
    expect(await members()).toEqual(first);
    await expectError(await req('GET', `${SNAPS}/by-cli`), 404, 'ResourceNotFound');
  });

  it('reverts at the #Namespace.Action path too', async () => {
    const r = await finish(await req('POST', `${SNAPS}/slow/Actions/HawkFishSnapshot.Revert`, { user: 'op' }), 'op');
    expect(r.status).toBe(200);
    expect((await cb.vms.show('web')).current).toBe('slow');
  });

  it('refuses to delete a snapshot with children (409 ResourceInUse naming them and the recursive option)', async () => {
    const before = await homeState();
    const kids = (await cb.snapshots.show('web', 's1')).children;
    expect(kids.length).toBeGreaterThan(0);
    const b = await expectError(await req('DELETE', `${SNAPS}/s1`, { user: 'op' }), 409, 'ResourceInUse');
    const m = b.error['@Message.ExtendedInfo'][0]!;
    for (const k of kids) expect(`${m.Message} ${m.Resolution}`).toContain(k);
    expect(m.Resolution).toContain('recursive=true');
    expect(await homeState()).toBe(before);
  });

  it('deletes a leaf snapshot (204 at the monitor) and a subtree with ?recursive=true', async () => {
    await create('leaf');
    const d = await finish(await req('DELETE', `${SNAPS}/leaf`, { user: 'op' }), 'op');
    expect(d.status).toBe(204);
    await expectError(await req('GET', `${SNAPS}/leaf`), 404, 'ResourceNotFound');
    await create('t1');
    await create('t2');
    const r = await finish(await req('DELETE', `${SNAPS}/t1?recursive=true`, { user: 'op' }), 'op');
    expect(r.status).toBe(204);
    const names = (await cb.snapshots.list('web')).map((s) => s.name);
    expect(names).not.toContain('t1');
    expect(names).not.toContain('t2');
  });

  it('honours If-Match: a stale ETag gets 412 and changes nothing', async () => {
    const before = await homeState();
    await expectError(await req('DELETE', `${SNAPS}/slow`, { user: 'op', headers: { 'If-Match': 'W/"stale"' } }), 412, 'PreconditionFailed');
    expect(await homeState()).toBe(before);
  });

  it('warns in the task when quiesce is unavailable (image driver: no guest agent)', async () => {
    const r = await req('POST', SNAPS, { user: 'op', body: { Name: 'q1', Quiesce: true } });
    const mon = r.headers.get('Location')!;
    expect((await finish(r, 'op')).status).toBe(201);
    const task = await getJson<{ TaskStatus: string; Messages: { MessageId: string }[] }>(mon.replace('TaskMonitors', 'Tasks'));
    expect(task.TaskStatus).toBe('Warning');
    const ids = task.Messages.map((m) => m.MessageId);
    expect(ids).toContain('HawkFish.1.0.0.QuiesceUnavailable');
    expect(ids).toContain('HawkFish.1.0.0.StorageEstimate');
  });

  it('prunes the oldest auto snapshots beyond the system limit and says which in the task', async () => {
    // Three auto snapshots (as `snapshot run` makes them), then a limit of two.
    await cb.snapshots.run('web', ['true'], { name: 'auto1' });
    await cb.snapshots.run('web', ['true'], { name: 'auto2' });
    await cb.snapshots.run('web', ['true'], { name: 'auto3' });
    const patched = await req('PATCH', '/redfish/v1/Systems/web', { body: { Oem: { HawkFish: { SnapshotLimit: 2 } } } });
    expect(patched.status).toBe(200);
    expect(((await patched.json()) as { Oem: { HawkFish: { SnapshotLimit: number } } }).Oem.HawkFish.SnapshotLimit).toBe(2);
    const r = await req('POST', SNAPS, { user: 'op', body: { Name: 'after-limit' } });
    const mon = r.headers.get('Location')!;
    expect((await finish(r, 'op')).status).toBe(201);
    const task = await getJson<{ Messages: { MessageId: string; Message: string }[] }>(mon.replace('TaskMonitors', 'Tasks'));
    const pruned = task.Messages.find((m) => m.MessageId === 'HawkFish.1.0.0.PrunedByLimit');
    expect(pruned?.Message).toContain('auto1');
    const names = (await cb.snapshots.list('web')).map((s) => s.name);
    expect(names).not.toContain('auto1');
    expect(names).toContain('after-limit');
    await cb.snapshots.policy('web', { max_snapshots: 1000 });
  });

  it('refuses a create when the filesystem lacks the estimated space (507 InsufficientStorage, estimate in the task)', async () => {
    await qemuIo(disk(), ['write -P 9 2M 1M']);
    const tight = await createRedfishApp(cb, { now: () => clock, freeBytes: async () => 4096 });
    try {
      const before = await homeState();
      const accepted = await tight.app.request(SNAPS, {
        method: 'POST',
        headers: { Authorization: basic('op'), 'Content-Type': 'application/json' },
        body: '{"Name":"big"}',
      });
      expect(accepted.status).toBe(202);
      const mon = accepted.headers.get('Location')!;
      let r: Response;
      for (;;) {
        r = await tight.app.request(mon, { headers: { Authorization: basic('op') } });
        if (r.status !== 202) break;
        await new Promise((res) => setTimeout(res, 10));
      }
      const b = await expectError(r, 507, 'InsufficientStorage');
      expect(b.error['@Message.ExtendedInfo'].map((m) => m.MessageId)).toContain('HawkFish.1.0.0.StorageEstimate');
      const task = (await (await tight.app.request(mon.replace('TaskMonitors', 'Tasks'), { headers: { Authorization: basic('op') } })).json()) as {
        TaskState: string;
      };
      expect(task.TaskState).toBe('Exception');
      expect(await homeState()).toBe(before);
    } finally {
      await tight.close();
    }
  });
});

describe('task, session and event services', () => {
  it('lists tasks under TaskService, each with its monitor; sessions per user; HEAD answers without a body', async () => {
    const ts = await getJson('/redfish/v1/TaskService');
    expect(ts.Tasks).toEqual({ '@odata.id': '/redfish/v1/TaskService/Tasks' });
    const tasks = await getJson<{ Members: { '@odata.id': string }[]; 'Members@odata.count': number }>('/redfish/v1/TaskService/Tasks');
    expect(tasks['Members@odata.count']).toBeGreaterThan(0);
    const t = await getJson<{ TaskState: string; TaskMonitor: string; Messages: unknown[]; PercentComplete: number }>(tasks.Members[0]!['@odata.id']);
    expect(t.TaskState).toBe('Completed');
    expect(t.PercentComplete).toBe(100);
    expect(t.TaskMonitor).toMatch(/\/TaskService\/TaskMonitors\//);
    await expectError(await req('GET', '/redfish/v1/TaskService/Tasks/ffff'), 404, 'ResourceNotFound');
    await expectError(await req('GET', '/redfish/v1/TaskService/TaskMonitors/ffff'), 404, 'ResourceNotFound');

    const login = await req('POST', '/redfish/v1/SessionService/Sessions', { user: null, body: { UserName: 'ro', Password: PW } });
    const token = login.headers.get('X-Auth-Token')!;
    const mine = await getJson<{ Members: { '@odata.id': string }[] }>('/redfish/v1/SessionService/Sessions', { headers: { 'X-Auth-Token': token } });
    expect(mine.Members).toEqual([{ '@odata.id': login.headers.get('Location') }]);
    // Another user's session is not there for a ReadOnly user; an Administrator sees and ends it.
    const other = await req('POST', '/redfish/v1/SessionService/Sessions', { user: null, body: { UserName: 'op', Password: PW } });
    await expectError(await req('DELETE', other.headers.get('Location')!, { headers: { 'X-Auth-Token': token } }), 404, 'ResourceNotFound');
    const all = await getJson<{ Members: { '@odata.id': string }[] }>('/redfish/v1/SessionService/Sessions');
    expect(all.Members.map((m) => m['@odata.id'])).toContain(other.headers.get('Location'));
    expect((await req('DELETE', other.headers.get('Location')!)).status).toBe(204);
    await expectError(await req('GET', '/redfish/v1/Systems', { headers: { 'X-Auth-Token': other.headers.get('X-Auth-Token')! } }), 401, 'NoValidSession');

    const head = await req('HEAD', SNAPS);
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
  });

  it('answers 503 ServiceShuttingDown once the service is closing', async () => {
    const other = await createRedfishApp(cb, { now: () => clock });
    await other.close();
    await expectError(await other.app.request('/redfish/v1/', {}), 503, 'ServiceShuttingDown');
  });
});

describe('cancelling tasks (DELETE of a task or its monitor)', () => {
  /** Polls the monitor until the task left New (it reads the home's event log first). */
  async function running(mon: string): Promise<void> {
    for (let i = 0; i < 500; i++) {
      const t = (await (await req('GET', mon)).json()) as { TaskState: string };
      if (t.TaskState !== 'New') {
        expect(t.TaskState).toBe('Running');
        return;
      }
      await new Promise((res) => setTimeout(res, 10));
    }
    throw new Error(`task ${mon} did not start`);
  }

  it('cancels a running create and a running revert: 204, Cancelled, TaskCancelled at the monitor, nothing changed on disk', async () => {
    const currentBefore = (await cb.vms.show('web')).current;
    const lock = await lockVm(resolveHome(home), 'web', 'test holds the VM');
    try {
      const before = await homeState();
      const r = await req('POST', SNAPS, { user: 'op', body: { Name: 'cancelled' } });
      const mon = r.headers.get('Location')!;
      await running(mon);
      expect((await getJson(`${SNAPS}/cancelled`)).SnapshotState).toBe('Creating');
      const del = await req('DELETE', mon, { user: 'op' });
      expect(del.status).toBe(204);
      await expectError(await req('GET', mon), 409, 'TaskCancelled');
      const id = mon.split('/').pop()!;
      const task = await getJson<{ TaskState: string; Messages: { MessageId: string }[] }>(`/redfish/v1/TaskService/Tasks/${id}`);
      expect(task.TaskState).toBe('Cancelled');
      expect(task.Messages.map((m) => m.MessageId.split('.').pop())).toContain('TaskCancelled');
      await expectError(await req('GET', `${SNAPS}/cancelled`), 404, 'ResourceNotFound');
      expect((await getJson<{ Members: { '@odata.id': string }[] }>(SNAPS)).Members).not.toContainEqual({ '@odata.id': `${SNAPS}/cancelled` });

      // The same through the Task resource, for a revert.
      const rev = await req('POST', `${SNAPS}/s1/Actions/Oem.HawkFish.Snapshot.Revert`, { user: 'op', body: {} });
      const revMon = rev.headers.get('Location')!;
      await running(revMon);
      expect((await getJson(`${SNAPS}/s1`)).SnapshotState).toBe('Reverting');
      expect((await req('DELETE', `/redfish/v1/TaskService/Tasks/${revMon.split('/').pop()}`, { user: 'op' })).status).toBe(204);
      await expectError(await req('GET', revMon), 409, 'TaskCancelled');
      expect((await getJson(`${SNAPS}/s1`)).SnapshotState).toBe('Ready');
      expect(await homeState()).toBe(before);
    } finally {
      await lock.release();
    }
    expect((await cb.vms.show('web')).current).toBe(currentBefore);
    for (const s of await cb.snapshots.list('web')) for (const d of s.disks) expect((await qemuCheck(d.path)).code).toBe(0);
  });

  it('refuses to cancel a task that ended (409 TaskNotCancellable), an unknown one (404), and for a ReadOnly user (403)', async () => {
    const r = await req('POST', SNAPS, { user: 'op', body: { Name: 'kept' } });
    const mon = r.headers.get('Location')!;
    await expectError(await req('DELETE', mon, { user: 'ro' }), 403, 'InsufficientPrivilege');
    expect((await finish(r)).status).toBe(201);
    await expectError(await req('DELETE', mon, { user: 'op' }), 409, 'TaskNotCancellable');
    await expectError(await req('DELETE', `/redfish/v1/TaskService/Tasks/${mon.split('/').pop()}`, { user: 'op' }), 409, 'TaskNotCancellable');
    expect((await getJson(`${SNAPS}/kept`)).SnapshotState).toBe('Ready');
    await expectError(await req('DELETE', '/redfish/v1/TaskService/TaskMonitors/ffff', { user: 'op' }), 404, 'ResourceNotFound');
  });

  it('rolls a create back when its signal fires after the driver prepared, before the journal commits (the library half of a cancel)', async () => {
    const before = await homeState();
    const ac = new AbortController();
    const err = await cb.snapshots
      .create('web', {
        name: 'late-cancel',
        signal: ac.signal,
        // Fires once the create has passed its own start check: the lock is free, so the next check is the commit point.
        onProgress: (p) => {
          if (p.done === 0) ac.abort();
        },
      })
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect((err as { code?: string }).code).toBe('ABORTED');
    expect(await homeState()).toBe(before);
  });
});

describe('bad input: right status, Redfish error body, nothing changed on disk', () => {
  it.each([
    ['malformed JSON', () => req('POST', SNAPS, { user: 'op', raw: '{"Name": ' }), 400, 'MalformedJSON'],
    ['a JSON array', () => req('POST', SNAPS, { user: 'op', raw: '[1,2]' }), 400, 'MalformedJSON'],
    ['a wrong type', () => req('POST', SNAPS, { user: 'op', body: { Name: 42 } }), 400, 'PropertyValueTypeError'],
    ['a wrong type in Tags', () => req('POST', SNAPS, { user: 'op', body: { Tags: 'x' } }), 400, 'PropertyValueTypeError'],
    ['an unknown property', () => req('POST', SNAPS, { user: 'op', body: { Name: 'x1', Colour: 'red' } }), 400, 'PropertyUnknown'],
    ['a bad name', () => req('POST', SNAPS, { user: 'op', body: { Name: '../etc' } }), 400, 'PropertyValueFormatError'],
    ['the reserved name current', () => req('POST', SNAPS, { user: 'op', body: { Name: 'current' } }), 400, 'PropertyValueFormatError'],
    [
      'a huge body',
      () => req('POST', SNAPS, { user: 'op', raw: JSON.stringify({ Name: 'x2', Description: 'x'.repeat(200_000) }) }),
      413,
      'RequestBodyTooLarge',
    ],
    ['an existing name', () => req('POST', SNAPS, { user: 'op', body: { Name: 's1' } }), 409, 'ResourceAlreadyExists'],
    ['an unknown system', () => req('POST', '/redfish/v1/Systems/nosuch/Oem/HawkFish/Snapshots', { user: 'op', body: {} }), 404, 'ResourceNotFound'],
    ['path traversal in a system id', () => req('GET', '/redfish/v1/Systems/..%2F..%2Fetc'), 404, 'ResourceNotFound'],
    ['path traversal in a snapshot id', () => req('DELETE', `${SNAPS}/..%2Fvm.json`, { user: 'op' }), 404, 'ResourceNotFound'],
    ['an unknown snapshot', () => req('GET', `${SNAPS}/nosuch`), 404, 'ResourceNotFound'],
    [
      'a revert parameter that does not exist',
      () => req('POST', `${SNAPS}/s1/Actions/HawkFishSnapshot.Revert`, { user: 'op', body: { Force: true } }),
      400,
      'ActionParameterUnknown',
    ],
    ['a bad recursive value', () => req('DELETE', `${SNAPS}/s1?recursive=yes`, { user: 'op' }), 400, 'QueryParameterValueFormatError'],
    [
      'a limit of the wrong type',
      () => req('PATCH', '/redfish/v1/Systems/web', { body: { Oem: { HawkFish: { SnapshotLimit: 'ten' } } } }),
      400,
      'PropertyValueTypeError',
    ],
    [
      'a limit out of range',
      () => req('PATCH', '/redfish/v1/Systems/web', { body: { Oem: { HawkFish: { SnapshotLimit: 0 } } } }),
      400,
      'PropertyValueOutOfRange',
    ],
    ['an unknown system property', () => req('PATCH', '/redfish/v1/Systems/web', { body: { PowerState: 'On' } }), 400, 'PropertyUnknown'],
    [
      'a login without a password',
      () => req('POST', '/redfish/v1/SessionService/Sessions', { user: null, body: { UserName: 'admin' } }),
      400,
      'PropertyMissing',
    ],
  ] as const)('%s', async (_what, send, status, id) => {
    const before = await homeState();
    await expectError(await send(), status, id);
    expect(await homeState()).toBe(before);
  });

  it('refuses a change to a snapshot a task is working on (409 ResourceInUse)', async () => {
    const lock = await lockVm(resolveHome(home), 'web', 'test holds the VM');
    let r: Response;
    try {
      r = await req('POST', `${SNAPS}/s1/Actions/HawkFishSnapshot.Revert`, { user: 'op' });
      expect(r.status).toBe(202);
      await expectError(await req('DELETE', `${SNAPS}/s1?recursive=true`, { user: 'op' }), 409, 'ResourceInUse');
    } finally {
      await lock.release();
    }
    expect((await finish(r)).status).toBe(200);
  });
});

describe('events (SSE)', () => {
  /** Reads SSE frames from a streaming response until `n` events arrived (bounded). */
  async function readEvents(res: Response, until: (evs: { id: string; data: Record<string, unknown> }[]) => boolean) {
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    let buf = '';
    const evs: { id: string; data: Record<string, unknown> }[] = [];
    const deadline = Date.now() + 60_000;
    while (!until(evs)) {
      if (Date.now() > deadline) throw new Error(`SSE: only ${evs.length} events: ${JSON.stringify(evs.map((e) => e.data.Events))}`);
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i = buf.indexOf('\n\n');
      while (i >= 0) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const lines = frame.split('\n');
        // Only id: and data: lines.
        for (const l of lines) expect(l).toMatch(/^(id|data): /);
        const id = lines.find((l) => l.startsWith('id: '))!.slice(4);
        const data = JSON.parse(lines.find((l) => l.startsWith('data: '))!.slice(6)) as Record<string, unknown>;
        evs.push({ id, data });
        i = buf.indexOf('\n\n');
      }
    }
    await reader.cancel();
    return evs;
  }

  type Rec = { MessageId: string; OriginOfCondition: { '@odata.id': string }; EventTimestamp: string; MessageSeverity: string };
  const recs = (evs: { data: Record<string, unknown> }[]) => evs.flatMap((e) => e.data.Events as Rec[]);
  const short = (r: Rec) => `${r.MessageId.split('.').pop()} ${r.OriginOfCondition['@odata.id'].replace(`${SNAPS}/`, '')}`;

  it('streams Redfish Events in order for API operations and CLI operations on the same home, and resumes with Last-Event-ID', async () => {
    const es = await getJson<{ ServerSentEventUri: string }>('/redfish/v1/EventService');
    const stream = await req('GET', es.ServerSentEventUri);
    expect(stream.status).toBe(200);
    expect(stream.headers.get('Content-Type')).toBe('text/event-stream');
    await create('ev1');
    expect((await finish(await req('POST', `${SNAPS}/ev1/Actions/HawkFishSnapshot.Revert`, { user: 'op' }))).status).toBe(200);
    await new CliHome(home).ok(['snapshot', 'create', 'web', '--name', 'cli-ev']);
    await new CliHome(home).ok(['snapshot', 'delete', 'web', '--name', 'cli-ev']);
    expect((await finish(await req('DELETE', `${SNAPS}/ev1`, { user: 'op' }))).status).toBe(204);
    const want = (evs: { data: Record<string, unknown> }[]) => recs(evs).filter((r) => r.MessageId.endsWith('TaskCompletedOK')).length >= 3;
    const evs = await readEvents(stream, want);
    for (const e of evs) {
      expect(e.data['@odata.type']).toBe('#Event.v1_7_0.Event');
      expect(e.data.Id).toBe(e.id);
      for (const r of e.data.Events as Rec[]) {
        expect(Number.isNaN(Date.parse(r.EventTimestamp))).toBe(false);
        expect(['OK', 'Warning', 'Critical']).toContain(r.MessageSeverity);
      }
    }
    const ids = evs.map((e) => Number(e.id));
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);
    const seq = recs(evs)
      .map(short)
      .filter((s) => !s.startsWith('TaskProgressChanged'))
      .map((s) => s.replace(/\/redfish\/v1\/TaskService\/Tasks\/[0-9a-f]+$/, 'task'));
    expect(seq).toEqual([
      'TaskStarted task',
      'ResourceCreated ev1',
      'TaskCompletedOK task',
      'TaskStarted task',
      'SnapshotReverted /redfish/v1/Systems/web',
      'ResourceChanged /redfish/v1/Systems/web',
      'TaskCompletedOK task',
      'ResourceCreated cli-ev',
      'ResourceRemoved cli-ev',
      'TaskStarted task',
      'ResourceRemoved ev1',
      'TaskCompletedOK task',
    ]);
    // Resume: everything after the 7th event again, from the kept buffer.
    const again = await readEvents(await req('GET', es.ServerSentEventUri, { headers: { 'Last-Event-ID': evs[6]!.id } }), (e) => e.length >= evs.length - 7);
    expect(again.map((e) => e.id)).toEqual(evs.slice(7).map((e) => e.id));
  });

  it('filters the stream with $filter (RegistryPrefix, ResourceType, MessageId, OriginResource, not/and/or) and shows snapshots a bundle import registered, in order', async () => {
    const filter = "RegistryPrefix eq 'ResourceEvent' and (ResourceType eq 'HawkFishSnapshot' or OriginResource eq '/redfish/v1/Systems/web')";
    const only = await req('GET', `/redfish/v1/EventService/SSE?$filter=${encodeURIComponent(filter)}`);
    expect(only.status).toBe(200);
    const byId = await req(
      'GET',
      `/redfish/v1/EventService/SSE?$filter=${encodeURIComponent("(MessageId eq 'TaskEvent.TaskStarted' or MessageId eq 'TaskEvent.1.0.3.TaskCompletedOK') and not (RegistryPrefix ne 'TaskEvent')")}`,
    );
    expect(byId.status).toBe(200);
    await create('flt1');
    const bundle = path.join(home, 'web.cbx');
    const cli = new CliHome(home);
    await cli.ok(['snapshot', 'export', 'web', '-o', bundle]);
    await cli.ok(['snapshot', 'import', 'copy', bundle]);
    const imported = (await cb.snapshots.list('copy')).map((x) => x.name).reverse();
    expect(imported.length).toBeGreaterThan(0);
    const evs = await readEvents(only, (e) => recs(e).filter((r) => r.OriginOfCondition['@odata.id'].includes('/Systems/copy/')).length >= imported.length);
    // No task events, no other registry: every record is a ResourceEvent about a snapshot or the system.
    for (const r of recs(evs)) expect(r.MessageId.startsWith('ResourceEvent.')).toBe(true);
    expect(recs(evs).map((r) => `${r.MessageId.split('.').pop()} ${r.OriginOfCondition['@odata.id']}`)).toEqual([
      `ResourceCreated ${SNAPS}/flt1`,
      ...imported.map((n) => `ResourceCreated /redfish/v1/Systems/copy/Oem/HawkFish/Snapshots/${n}`),
    ]);
    const tasks = recs(await readEvents(byId, (e) => recs(e).length >= 2)).map((r) => r.MessageId.split('.').pop());
    expect(tasks).toEqual(['TaskStarted', 'TaskCompletedOK']);
    await cb.vms.remove('copy', { deleteFiles: true });
  });

  it.each([
    ['an unknown property', "Severity eq 'OK'"],
    ['an unsupported operator', "MessageId gt 'a'"],
    ['a number', 'EventType eq 5'],
    ['an unterminated string', "MessageId eq 'x"],
    ['a missing parenthesis', "(MessageId eq 'x'"],
    ['trailing words', "MessageId eq 'x' MessageId"],
    ['a function', "contains(MessageId, 'x')"],
  ])('refuses a $filter with %s (400 QueryParameterValueFormatError)', async (_what, f) => {
    const b = await expectError(await req('GET', `/redfish/v1/EventService/SSE?$filter=${encodeURIComponent(f)}`), 400, 'QueryParameterValueFormatError');
    expect(b.error['@Message.ExtendedInfo'][0]!.Resolution).toMatch(/^The filter has /);
  });
});
