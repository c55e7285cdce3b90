/**
 * `clonebox serve` as a process, driven by real clients: redfishtool (Basic and sessions over HTTPS,
 * raw create/revert/delete following the task monitor), `clonebox remote`, and curl-less checks of TLS
 * and accounts. Plus SIGKILL of the service at every journal step of a create and a revert: the next
 * command recovers the VM as the CLI's crash tests require.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../src/store/home.js';
import { lockVm } from '../src/store/registry.js';
import { CLI_PATH, CliHome, parseCliError } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { qemuCompare } from './helpers/qemu.js';
import { VmFixture } from './helpers/snapshots.js';
import { makeTempDir } from './helpers/temp.js';

const PW = 'serve test password';

interface Running {
  child: ChildProcess;
  url: string;
  port: number;
  fingerprint: string | null;
  certificate: string | null;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr: () => string;
}

const started: Running[] = [];

/** Starts `clonebox serve --json` on a random port and waits (bounded) for its address. */
async function startServe(home: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Running> {
  const child = spawn(process.execPath, [CLI_PATH, '--home', home, 'serve', '--listen', '127.0.0.1:0', '--json', ...extra], {
    env: { ...process.env, ...env, CLONEBOX_HOME: undefined },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const info = await new Promise<{ url: string; fingerprint: string | null; certificate: string | null }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start in 60 s: ${err}`)), 60_000);
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      try {
        const v = JSON.parse(out) as { url: string; fingerprint: string | null; certificate: string | null };
        clearTimeout(timer);
        resolve(v);
      } catch {
        // not complete yet
      }
    });
    void exited.then((e) => {
      clearTimeout(timer);
      reject(new Error(`serve exited (${e.code ?? e.signal}) before listening: ${err}`));
    });
  });
  const r: Running = { child, ...info, port: Number(new URL(info.url).port), exited, stderr: () => err };
  started.push(r);
  return r;
}

afterEach(async () => {
  for (const r of started.splice(0)) {
    if (r.child.exitCode === null && r.child.signalCode === null) {
      r.child.kill('SIGKILL');
      await r.exited;
    }
  }
});

function redfishtool(s: Running, args: string[]) {
  return run('redfishtool', ['-r', `127.0.0.1:${s.port}`, '-u', 'admin', '-p', PW, '-S', 'Always', '-T', '30', ...args], { timeoutMs: 120_000 });
}

describe('clonebox serve with real clients', () => {
  let f: VmFixture;
  let creds: string;

  beforeAll(async () => {
    const root = await makeTempDir('clonebox-serve-cli-');
    f = await VmFixture.create(path.join(root, 'home'), path.join(root, 'disks'), 'web');
    await f.write('write -P 1 0 1M');
    const add = await new CliHome(f.home).cli(['user', 'add', 'admin', '--role', 'Administrator', '--password-stdin'], { input: `${PW}\n` });
    expect(add.code, add.stderr).toBe(0);
    const pwFile = path.join(root, 'pw');
    await writeFile(pwFile, `${PW}\n`);
    await f.ok(['user', 'add', 'viewer', '--role', 'ReadOnly', '--password-file', pwFile]);
    creds = path.join(root, 'creds');
    await writeFile(creds, `admin:${PW}\n`);
    await chmod(creds, 0o600);
  });

  it('keeps accounts in a 0600 file of Argon2id hashes, never the password', async () => {
    const file = path.join(f.home, 'serve', 'accounts.json');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const text = await readFile(file, 'utf8');
    expect(text).not.toContain(PW);
    expect(text).toContain('$argon2id$');
    const list = await f.json<{ name: string; role: string }[]>(['user', 'list']);
    expect(list.map((u) => [u.name, u.role])).toEqual([
      ['admin', 'Administrator'],
      ['viewer', 'ReadOnly'],
    ]);
    // An existing name is refused before any password is read (no input at all here).
    const dup = await new CliHome(f.home).cli(['user', 'add', 'admin', '--role', 'Operator', '--password-stdin', '--json']);
    expect(dup.code).toBe(1);
    expect(parseCliError(dup, true).code).toBe('USER_EXISTS');
    const bad = await new CliHome(f.home).cli(['user', 'add', 'x', '--role', 'Root', '--password-stdin'], { input: `${PW}\n` });
    expect(bad.code).toBe(2);
  });

  it('refuses plain HTTP on a non-loopback address', async () => {
    const r = await f.cli(['serve', '--insecure-http', '--listen', '0.0.0.0:0']);
    expect(r.code).toBe(2);
    expect(parseCliError(r, false).message).toContain('loopback');
  });

  it('redfishtool lists Systems over HTTPS with Basic and with a session, and creates, reverts and deletes through raw calls', async () => {
    const s = await startServe(f.home);
    expect(s.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(s.fingerprint).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect((await stat(path.join(f.home, 'serve', 'tls', 'key.pem'))).mode & 0o777).toBe(0o600);

    for (const auth of [[], ['-A', 'Session']]) {
      const r = await redfishtool(s, [...auth, 'Systems']);
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout) as { Members: unknown[] }).Members).toEqual([{ '@odata.id': '/redfish/v1/Systems/web' }]);
    }
    const bad = await run('redfishtool', ['-r', `127.0.0.1:${s.port}`, '-u', 'admin', '-p', 'wrong', '-S', 'Always', 'Systems'], { timeoutMs: 60_000 });
    expect(bad.code).not.toBe(0);

    await f.refCurrent('rf1');
    const created = await redfishtool(s, [
      'raw',
      'POST',
      '/redfish/v1/Systems/web/Oem/HawkFish/Snapshots',
      '-d',
      '{"Name":"rf1","Description":"by redfishtool"}',
    ]);
    expect(created.code, created.stderr).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({ Id: 'rf1', SnapshotState: 'Ready', Description: 'by redfishtool', Current: true });

    await f.write('write -P 2 0 1M');
    await f.refCurrent('rf2');
    const c2 = await redfishtool(s, ['-A', 'Session', 'raw', 'POST', '/redfish/v1/Systems/web/Oem/HawkFish/Snapshots', '-d', '{"Name":"rf2"}']);
    expect(c2.code, c2.stderr).toBe(0);

    const rev = await redfishtool(s, ['raw', 'POST', '/redfish/v1/Systems/web/Oem/HawkFish/Snapshots/rf1/Actions/Oem.HawkFish.Snapshot.Revert', '-d', '{}']);
    expect(rev.code, rev.stderr).toBe(0);
    expect(JSON.parse(rev.stdout)).toMatchObject({ Id: 'rf1', Current: true });
    expect((await qemuCompare(f.disk, f.refs.get('rf1')!)).code).toBe(0);

    const del = await redfishtool(s, ['raw', 'DELETE', '/redfish/v1/Systems/web/Oem/HawkFish/Snapshots/rf2']);
    expect(del.code, del.stderr).toBe(0);
    expect((await f.list()).map((x) => x.name)).toEqual(['rf1']);
    await f.expectIntact(f.refs.get('rf1')!);

    // Graceful stop on SIGTERM.
    s.child.kill('SIGTERM');
    expect(await s.exited).toEqual({ code: 0, signal: null });
  });

  it('over a socket: a CLI change shows at the very next request, and DELETE of a task monitor cancels a running create', async () => {
    const s = await startServe(f.home, ['--insecure-http', '--no-schedule'], { CLONEBOX_LOCK_WAIT_MS: '60000' });
    const auth = { Authorization: `Basic ${Buffer.from(`admin:${PW}`).toString('base64')}` };
    const coll = `${s.url}/redfish/v1/Systems/web/Oem/HawkFish/Snapshots`;
    const names = async () =>
      ((await (await fetch(coll, { headers: auth })).json()) as { Members: { '@odata.id': string }[] }).Members.map((m) => m['@odata.id'].split('/').pop());
    // The served list is kept between requests (inotify tells the service of changes): each CLI change
    // must show at the request right after the CLI exits, several times over.
    for (let i = 0; i < 3; i++) {
      const before = await names();
      expect(await names()).toEqual(before);
      await f.ok(['snapshot', 'create', 'web', '--name', `sock${i}`]);
      expect(await names()).toEqual([`sock${i}`, ...before]);
      await f.ok(['snapshot', 'delete', 'web', '--name', `sock${i}`]);
      expect(await names()).toEqual(before);
    }

    const before = await f.json<{ name: string }[]>(['snapshot', 'list', 'web']);
    const lock = await lockVm(resolveHome(f.home), 'web', 'test holds the VM');
    try {
      const r = await fetch(coll, { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' }, body: JSON.stringify({ Name: 'never' }) });
      expect(r.status).toBe(202);
      const mon = `${s.url}${r.headers.get('Location')}`;
      let state = 'New';
      for (let i = 0; i < 500 && state === 'New'; i++) {
        if (i > 0) await new Promise((res) => setTimeout(res, 20));
        state = ((await (await fetch(mon, { headers: auth })).json()) as { TaskState: string }).TaskState;
      }
      expect(state).toBe('Running');
      const del = await fetch(mon, { method: 'DELETE', headers: auth });
      expect(del.status).toBe(204);
      const after = await fetch(mon, { headers: auth });
      expect(after.status).toBe(409);
      expect(((await after.json()) as { error: { code: string } }).error.code).toBe('TaskEvent.1.0.3.TaskCancelled');
      expect((await fetch(`${coll}/never`, { headers: auth })).status).toBe(404);
      expect((await fetch(mon, { method: 'DELETE', headers: auth })).status).toBe(409);
    } finally {
      await lock.release();
    }
    expect(await f.json<{ name: string }[]>(['snapshot', 'list', 'web'])).toEqual(before);
  });

  it('clonebox remote drives the service and prints what the local commands print', async () => {
    const s = await startServe(f.home);
    const remote = (args: string[], extra: string[] = ['--fingerprint', s.fingerprint!]) =>
      new CliHome(f.home).cli(['remote', 'snapshot', ...args, '--url', s.url, '--credentials', creds, ...extra]);
    await f.write('write -P 3 0 1M');
    await f.refCurrent('r1');
    const c = await remote(['create', 'web', '--name', 'r1', '--description', 'remote', '--json']);
    expect(c.code, c.stderr).toBe(0);
    const v = JSON.parse(c.stdout) as { name: string; parent: string; description: string; current: boolean };
    expect(v).toMatchObject({ name: 'r1', parent: 'rf1', description: 'remote', current: true });

    const local = (await f.list()).map((x) => ({ name: x.name, parent: x.parent, current: x.current, size_bytes: x.size_bytes, created_at: x.created_at }));
    const l = await remote(['list', 'web', '--json']);
    expect(l.code, l.stderr).toBe(0);
    const listed = (JSON.parse(l.stdout) as { name: string; parent: string | null; current: boolean; size_bytes: number; created_at: string }[]).map((x) => ({
      name: x.name,
      parent: x.parent,
      current: x.current,
      size_bytes: x.size_bytes,
      created_at: x.created_at,
    }));
    expect(listed).toEqual(local);
    const text = await remote(['list', 'web']);
    expect(text.stdout).toMatch(/NAME\s+TYPE\s+CREATED/);

    const r = await remote(['revert', 'web', '--name', 'rf1', '--yes', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ vm: 'web', restored: 'rf1', backup: null });
    expect((await qemuCompare(f.disk, f.refs.get('rf1')!)).code).toBe(0);

    // Errors come back with the library's codes.
    const busy = await remote(['delete', 'web', '--name', 'rf1', '--json']);
    expect(busy.code).toBe(1);
    const e = parseCliError(busy, true);
    expect(e.code).toBe('SNAPSHOT_HAS_CHILDREN');
    const missing = await remote(['delete', 'web', '--name', 'nosuch', '--json']);
    expect(missing.code).toBe(1);
    expect(parseCliError(missing, true).code).toBe('SNAPSHOT_NOT_FOUND');

    const d = await remote(['delete', 'web', '--name', 'r1', '--json']);
    expect(d.code, d.stderr).toBe(0);
    expect(JSON.parse(d.stdout)).toEqual({ vm: 'web', deleted: ['r1'], merged_into: [] });
    // A self-signed certificate is refused unless trusted (--ca or --fingerprint).
    const untrusted = await remote(['list', 'web', '--json'], []);
    expect(untrusted.code).toBe(1);
    expect(parseCliError(untrusted, true).code).toBe('REMOTE_UNREACHABLE');
    const withCa = await remote(['list', 'web', '--json'], ['--ca', s.certificate!]);
    expect(withCa.code, withCa.stderr).toBe(0);
    // A ReadOnly account reads but cannot write.
    const roCreds = path.join(path.dirname(creds), 'ro');
    await writeFile(roCreds, `viewer:${PW}\n`, { mode: 0o600 });
    const ro = await new CliHome(f.home).cli([
      'remote',
      'snapshot',
      'create',
      'web',
      '--url',
      s.url,
      '--credentials',
      roCreds,
      '--fingerprint',
      s.fingerprint!,
      '--json',
    ]);
    expect(ro.code).toBe(1);
    expect(parseCliError(ro, true).code).toBe('REMOTE_REFUSED');
    const wrong = path.join(path.dirname(creds), 'wrong');
    await writeFile(wrong, 'admin:not the password\n', { mode: 0o644 });
    await chmod(wrong, 0o644);
    const w = await new CliHome(f.home).cli([
      'remote',
      'snapshot',
      'list',
      'web',
      '--url',
      s.url,
      '--credentials',
      wrong,
      '--fingerprint',
      s.fingerprint!,
      '--json',
    ]);
    // A credentials file others can read is used, with a warning (as ssh does for keys, but not fatal).
    const [warning, ...rest] = w.stderr.split('\n');
    expect(warning).toMatch(/^clonebox: warning: the credentials file can be read by other users/);
    expect(parseCliError({ ...w, stderr: rest.join('\n') }, true).code).toBe('REMOTE_REFUSED');
  });
});

describe('SIGKILL of the service during a create or a revert', () => {
  /** POSTs through plain HTTP on loopback and follows the monitor until the reply or the process dies. */
  async function drive(s: Running, method: string, uri: string, body: unknown): Promise<number | 'killed'> {
    const auth = `Basic ${Buffer.from(`admin:${PW}`).toString('base64')}`;
    try {
      const r = await fetch(`${s.url}${uri}`, { method, headers: { Authorization: auth, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (r.status !== 202) return r.status;
      const mon = r.headers.get('Location')!;
      for (let i = 0; i < 3000; i++) {
        const m = await fetch(`${s.url}${mon}`, { headers: { Authorization: auth } });
        if (m.status !== 202) return m.status;
        await new Promise((res) => setTimeout(res, 20));
      }
      throw new Error('task did not finish');
    } catch (err) {
      if (err instanceof TypeError) return 'killed'; // connection refused or reset: the process is gone
      throw err;
    }
  }

  for (const sc of [
    {
      name: 'create',
      method: 'POST',
      uri: '/redfish/v1/Systems/web/Oem/HawkFish/Snapshots',
      body: { Name: 's2' },
      before: ['s1'],
      after: ['s1', 's2'],
      curAfter: 'cur',
    },
    {
      name: 'revert',
      method: 'POST',
      uri: '/redfish/v1/Systems/web/Oem/HawkFish/Snapshots/s1/Actions/HawkFishSnapshot.Revert',
      body: {},
      before: ['s1'],
      after: ['s1'],
      curAfter: 's1',
    },
  ]) {
    it(`${sc.name}: the next command recovers the VM at every step`, async () => {
      const root = await makeTempDir('clonebox-serve-crash-');
      const f = await VmFixture.create(path.join(root, 'home'), path.join(root, 'disks'), 'web');
      await f.write('write -P 1 0 1M');
      await f.snap('s1');
      await f.write('write -P 2 512k 1M');
      await f.refCurrent('cur');
      f.refs.set('s2', f.refs.get('cur')!);
      const add = await new CliHome(f.home).cli(['user', 'add', 'admin', '--role', 'Administrator', '--password-stdin'], { input: `${PW}\n` });
      expect(add.code, add.stderr).toBe(0);
      let crashes = 0;
      let completed = false;
      for (let n = 1; n <= 20 && !completed; n++) {
        const s = await startServe(f.home, ['--insecure-http'], { CLONEBOX_CRASH_AT: String(n) });
        const outcome = await drive(s, sc.method, sc.uri, sc.body);
        if (outcome === 'killed') {
          expect((await s.exited).signal).toBe('SIGKILL');
          crashes++;
        } else {
          expect(outcome, s.stderr()).toBeLessThan(300);
          completed = true;
          s.child.kill('SIGTERM');
          await s.exited;
        }
        const names = (await f.list()).map((x) => x.name).sort();
        const isAfter = JSON.stringify(names) === JSON.stringify(sc.after);
        expect(isAfter || JSON.stringify(names) === JSON.stringify(sc.before), `crash at ${n}: ${names.join(',')}`).toBe(true);
        const curAfter = (await qemuCompare(f.disk, f.refs.get(sc.curAfter)!)).code === 0;
        await f.expectIntact(f.refs.get(curAfter ? sc.curAfter : 'cur')!, new Set(isAfter ? sc.after : sc.before));
        if (!completed && sc.name === 'revert' && curAfter) {
          // Rolled forward: the next rounds start from the reverted state; put the original back.
          await f.write('write -P 2 512k 1M');
        }
        if (!completed && sc.name === 'create' && isAfter) await f.ok(['snapshot', 'delete', 'web', '--name', 's2']);
      }
      expect(completed).toBe(true);
      expect(crashes).toBeGreaterThanOrEqual(2);
    });
  }
});

describe('the scheduler inside the service', () => {
  it('takes the snapshots a named policy has due, without cron, and they show in the collection', async () => {
    const root = await makeTempDir('clonebox-serve-sched-');
    const f = await VmFixture.create(path.join(root, 'home'), path.join(root, 'disks'), 'web');
    const yaml = path.join(root, '.clonebox.yaml');
    await writeFile(yaml, 'vm:\n  name: web\npolicies:\n  nightly: {keep_last: 3, when: "00:00"}\n');
    const applied = await f.cli(['apply', yaml], { CLONEBOX_NOW: '2026-01-01T12:00:00Z' });
    expect(applied.code, applied.stderr).toBe(0);
    const add = await new CliHome(f.home).cli(['user', 'add', 'admin', '--role', 'Administrator', '--password-stdin'], { input: `${PW}\n` });
    expect(add.code, add.stderr).toBe(0);
    // A day later the nightly policy is due: the service's first pass at start takes it.
    const s = await startServe(f.home, ['--insecure-http'], { CLONEBOX_NOW: '2026-01-02T12:00:00Z' });
    const auth = `Basic ${Buffer.from(`admin:${PW}`).toString('base64')}`;
    let members: { '@odata.id': string }[] = [];
    for (let i = 0; i < 600 && members.length === 0; i++) {
      const r = await fetch(`${s.url}/redfish/v1/Systems/web/Oem/HawkFish/Snapshots`, { headers: { Authorization: auth } });
      members = ((await r.json()) as { Members: { '@odata.id': string }[] }).Members;
      if (members.length === 0) await new Promise((res) => setTimeout(res, 100));
    }
    expect(members).toHaveLength(1);
    const snap = (await (await fetch(`${s.url}${members[0]!['@odata.id']}`, { headers: { Authorization: auth } })).json()) as { AutoCreated: boolean };
    expect(snap.AutoCreated).toBe(true);
    expect((await f.list()).map((x) => x.auto_policy)).toEqual(['nightly']);
    s.child.kill('SIGTERM');
    expect(await s.exited).toEqual({ code: 0, signal: null });
  });
});
