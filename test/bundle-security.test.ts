/**
 * The bundle-side attacks of issue #11, each performed as the review did, against the real CLI or the
 * library on real qcow2 chains: a zero-range bomb (2), an encryption downgrade (4), a forged content
 * id (5), loose permissions (9) and key files that are passphrases or readable by others (13).
 */
import { existsSync, statSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Clonebox, CloneboxError } from '../src/index.js';
import { CLI_PATH, CliHome, parseJsonOutput } from './helpers/cli.js';
import { forgeZeroBundle } from './helpers/forge.js';
import { run } from './helpers/process.js';
import { qemuCheck, qemuIo } from './helpers/qemu.js';
import { rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

const M = 1024 * 1024;
const G = 1024 * M;
const T = 1024 * G;

let root = '';
/** A home with VM `web` (snapshots s1, s2) and a plain and an encrypted bundle of it. */
let a: CliHome;
let plainBundle = '';
let keyFile = '';

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CloneboxError) return err.code;
    throw err;
  }
  return 'no error';
}

function errorOf(r: { stdout: string; code: number }): { code: string; message: string } {
  return parseJsonOutput<{ error: { code: string; message: string } }>(r as never).error;
}

beforeAll(async () => {
  root = await makeTempDir('clonebox-bundle-security-');
  a = new CliHome(path.join(root, 'home-a'), { timeoutMs: 120_000 });
  const disks = path.join(root, 'disks-a');
  await a.ok(['vm', 'create', 'web', '--size', '16M', '--dir', disks]);
  const data = path.join(root, 'data.bin');
  await writeFile(data, rng(11).bytes(M));
  await qemuIo(path.join(disks, 'web.qcow2'), [`write -s ${data} 0 1M`, 'write -z 4M 1M']);
  await a.ok(['snapshot', 'create', 'web', '--name', 's1']);
  await qemuIo(path.join(disks, 'web.qcow2'), ['write -P 0x33 2M 256k']);
  await a.ok(['snapshot', 'create', 'web', '--name', 's2']);
  plainBundle = path.join(root, 'web.cbx');
  await a.ok(['snapshot', 'export', 'web', '-o', plainBundle]);
  keyFile = path.join(root, 'team.key');
  await a.ok(['key', 'generate', '-o', keyFile]);
}, 300_000);

describe('attack 4: a key given and a plain bundle found', () => {
  it('is refused by import, verify and inspect (BUNDLE_NOT_ENCRYPTED) unless --allow-plain', async () => {
    const b = new CliHome(path.join(root, 'home-b4'), { timeoutMs: 120_000 });
    const dir = path.join(root, 'disks-b4');
    const imp = await b.cli(['snapshot', 'import', 'web', plainBundle, '--key-file', keyFile, '--dir', dir, '--json']);
    expect(imp.code).toBe(1);
    expect(errorOf(imp).code).toBe('BUNDLE_NOT_ENCRYPTED');
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(path.join(b.home, 'vms', 'web'))).toBe(false);
    const ver = await b.cli(['snapshot', 'verify', plainBundle, '--key-file', keyFile, '--json']);
    expect(ver.code).toBe(1);
    expect(parseJsonOutput<{ ok: boolean; errors: { code: string }[] }>(ver)).toMatchObject({ ok: false, errors: [{ code: 'BUNDLE_NOT_ENCRYPTED' }] });
    const ins = await b.cli(['snapshot', 'inspect', plainBundle, '--key-file', keyFile, '--json']);
    expect(errorOf(ins).code).toBe('BUNDLE_NOT_ENCRYPTED');
    // A passphrase from the environment counts as given: the user expected an encrypted bundle.
    const env = await b.cli(['snapshot', 'verify', plainBundle, '--json'], { env: { CLONEBOX_PASSPHRASE: 'correct horse battery' } });
    expect(parseJsonOutput<{ errors: { code: string }[] }>(env).errors[0]?.code).toBe('BUNDLE_NOT_ENCRYPTED');
    // Explicitly accepted: imports.
    await b.ok(['snapshot', 'import', 'web', plainBundle, '--key-file', keyFile, '--allow-plain', '--dir', dir]);
    expect(existsSync(path.join(dir, 'web@s2.qcow2'))).toBe(true);
  });
});

describe('attack 13 and #17 item 12: key files and passphrases', () => {
  it('refuses a 32-character passphrase file given as a key file, and a key file others can read', async () => {
    const cb = await Clonebox.open({ home: path.join(root, 'home-k') });
    try {
      const pw32 = path.join(root, 'pw32.txt');
      await writeFile(pw32, 'correct-horse-battery-staple-xyz', { mode: 0o600 });
      expect((await readFile(pw32)).length).toBe(32);
      expect(await codeOf(cb.bundles.export('x', { output: path.join(root, 'x.cbx'), encrypt: true, keyFile: pw32 }))).toBe('BAD_KEY_FILE');
      // key generate writes 0600; made readable by the group it is refused, unless accepted explicitly.
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      const loose = path.join(root, 'loose.key');
      await writeFile(loose, await readFile(keyFile));
      await chmod(loose, 0o640);
      const enc = path.join(root, 'web-enc.cbx');
      await a.ok(['snapshot', 'export', 'web', '-o', enc, '--encrypt', '--key-file', keyFile]);
      expect(await codeOf(cb.bundles.verify(enc, { keyFile: loose }))).toBe('BAD_KEY_FILE');
      expect((await cb.bundles.verify(enc, { keyFile: loose, allowInsecureKeyFile: true })).ok).toBe(true);
      expect((await cb.bundles.verify(enc, { keyFile })).ok).toBe(true);
      // The key as bytes, and 64 hex digits in a file, are the same key.
      const hex = path.join(root, 'hex.key');
      await writeFile(hex, `${(await readFile(keyFile)).toString('hex')}\n`, { mode: 0o600 });
      expect((await cb.bundles.verify(enc, { keyFile: hex })).ok).toBe(true);
      expect((await cb.bundles.verify(enc, { key: new Uint8Array(await readFile(keyFile)) })).ok).toBe(true);
    } finally {
      await cb.close();
    }
  });

  it('takes the passphrase from stdin, CLONEBOX_PASSPHRASE, _FILE and _COMMAND, and warns when it is short', async () => {
    const enc = path.join(root, 'web-pw.cbx');
    const pwFile = path.join(root, 'pw.txt');
    await writeFile(pwFile, 'open sesame, please\n');
    await a.ok(['snapshot', 'export', 'web', '-o', enc, '--encrypt', '--passphrase-file', pwFile]);
    const verify = async (args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}) => {
      const r = await a.cli(['snapshot', 'verify', enc, ...args, '--json'], opts);
      return { code: r.code, doc: parseJsonOutput<{ ok: boolean; errors: { code: string }[] }>(r) };
    };
    expect((await verify(['--passphrase-file', '-'], { input: 'open sesame, please\n' })).doc.ok).toBe(true);
    expect((await verify(['--passphrase-file', '-'], { input: 'wrong\n' })).doc.errors[0]?.code).toBe('WRONG_KEY');
    expect((await verify([], { env: { CLONEBOX_PASSPHRASE: 'open sesame, please' } })).doc.ok).toBe(true);
    expect((await verify([], { env: { CLONEBOX_PASSPHRASE_FILE: pwFile } })).doc.ok).toBe(true);
    expect((await verify([], { env: { CLONEBOX_PASSPHRASE_COMMAND: `cat '${pwFile}'` } })).doc.ok).toBe(true);
    // No passphrase at all (no terminal to ask on): the bundle needs one.
    expect((await verify([])).doc.errors[0]?.code).toBe('KEY_REQUIRED');
    // Two sources at once are ambiguous.
    const both = await a.cli(['snapshot', 'verify', enc, '--json'], { env: { CLONEBOX_PASSPHRASE: 'x', CLONEBOX_PASSPHRASE_FILE: pwFile } });
    expect(both.code).toBe(2);
    // A one-character passphrase is accepted with a warning.
    const short = await a.cli(['snapshot', 'export', 'web', '-o', path.join(root, 'short.cbx'), '--encrypt'], { env: { CLONEBOX_PASSPHRASE: 'x' } });
    expect(short.code).toBe(0);
    expect(short.stderr).toMatch(/fewer than 8 characters/);
  });

  it('asks for the passphrase on a terminal with echo off (twice for a new bundle)', async () => {
    // A pseudo-terminal driven by Python's pty module: answers each prompt once it appears and returns
    // everything the terminal showed.
    const driver = `
import os, pty, sys, time
answers = sys.argv[1].split(',')
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
out = b''
asked = 0
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    if out.count(b'passphrase') > asked and out.endswith(b': ') and answers:
        asked += 1
        time.sleep(0.2)
        os.write(fd, answers.pop(0).encode() + b'\\r')
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
`;
    const secret = 'typed at the prompt';
    const out = path.join(root, 'typed.cbx');
    const common = [process.execPath, CLI_PATH, '--home', a.home];
    const ex = await run('python3', ['-c', driver, `${secret},${secret}`, ...common, 'snapshot', 'export', 'web', '-o', out, '--encrypt']);
    expect(ex.code, ex.stdout).toBe(0);
    expect(ex.stdout).toMatch(/passphrase for the new bundle: [\s\S]*the same passphrase again: /);
    expect(ex.stdout).not.toContain(secret);
    const ve = await run('python3', ['-c', driver, secret, ...common, 'snapshot', 'verify', out]);
    expect(ve.code, ve.stdout).toBe(0);
    expect(ve.stdout).toMatch(/passphrase for .*typed\.cbx: /);
    expect(ve.stdout).toMatch(/ok: 2 snapshot/);
    expect(ve.stdout).not.toContain(secret);
  });

  it('inspect labels the seal as claims', async () => {
    const r = await a.json<{ claims_verified: boolean }>(['snapshot', 'inspect', plainBundle]);
    expect(r.claims_verified).toBe(false);
    const human = await a.ok(['snapshot', 'inspect', plainBundle]);
    expect(human.stdout).toMatch(/what the bundle says/);
    expect(human.stdout).toMatch(/nothing in it is authenticated/);
  });
});

describe('attack 5: a forged content id', () => {
  it('never serves as the base of a later --since bundle', async () => {
    // The real author exports s2 --since s1; s1's content id is now in its record.
    const since = path.join(root, 'web-since.cbx');
    await a.ok(['snapshot', 'export', 'web', '--since', 's1', '-o', since]);
    const realS1 = JSON.parse(await readFile(path.join(a.home, 'vms', 'web', 'snapshots', 's1.json'), 'utf8')) as { content_id: string };
    expect(realS1.content_id).toMatch(/^[0-9a-f]{64}$/);
    // The attacker: other data under a snapshot named s1, its record given the real s1's id.
    const m = new CliHome(path.join(root, 'home-m'), { timeoutMs: 120_000 });
    const mDisks = path.join(root, 'disks-m');
    await m.ok(['vm', 'create', 'web', '--size', '16M', '--dir', mDisks]);
    await qemuIo(path.join(mDisks, 'web.qcow2'), ['write -P 0x66 0 1M']);
    await m.ok(['snapshot', 'create', 'web', '--name', 's1']);
    const recFile = path.join(m.home, 'vms', 'web', 'snapshots', 's1.json');
    const rec = JSON.parse(await readFile(recFile, 'utf8')) as Record<string, unknown>;
    await writeFile(recFile, JSON.stringify({ ...rec, content_id: realS1.content_id }));
    const forged = path.join(root, 'forged.cbx');
    await m.ok(['snapshot', 'export', 'web', '-o', forged]);
    // The victim imports the attacker's bundle (it is well formed), then the real --since bundle.
    const v = new CliHome(path.join(root, 'home-v'), { timeoutMs: 120_000 });
    await v.ok(['snapshot', 'import', 'web', forged, '--dir', path.join(root, 'disks-v')]);
    const r = await v.cli(['snapshot', 'import', 'web', since, '--json']);
    expect(r.code).toBe(1);
    const e = errorOf(r);
    expect(e.code).toBe('BASE_MISSING');
    expect(e.message).toMatch(/unverified/);
    expect((await readdir(path.join(root, 'disks-v'))).sort()).toEqual(['web.qcow2', 'web@s1.qcow2']);
    // The claim is kept (it names what the attacker says it is) but marked as such.
    const vRec = JSON.parse(await readFile(path.join(v.home, 'vms', 'web', 'snapshots', 's1.json'), 'utf8')) as Record<string, unknown>;
    expect(vRec.content_id).toBe(realS1.content_id);
    expect(vRec.content_id_unverified).toBe(true);
    // The real s1 (imported in full) is a base: the same --since bundle lands on it.
    const w = new CliHome(path.join(root, 'home-w'), { timeoutMs: 120_000 });
    const full1 = path.join(root, 'web-s1.cbx');
    await a.ok(['snapshot', 'export', 'web', '--name', 's1', '-o', full1]);
    await w.ok(['snapshot', 'import', 'web', full1, '--dir', path.join(root, 'disks-w')]);
    expect((await w.json<{ base: string }>(['snapshot', 'import', 'web', since])).base).toBe('s1');
  });
});

describe('attack 2: a zero-range bomb', () => {
  it('leaves the zero ranges of a root layer unallocated: a 1 TiB zero range costs nothing', async () => {
    const bomb = path.join(root, 'root-bomb.cbx');
    await forgeZeroBundle(bomb, [{ virtualSize: T, clusterSize: 65536, zeros: [{ offset: 0, length: T }] }]);
    expect((await stat(bomb)).size).toBeLessThan(8 * 1024);
    const b = new CliHome(path.join(root, 'home-b2'), { timeoutMs: 120_000 });
    const dir = path.join(root, 'disks-b2');
    const t0 = Date.now();
    await b.ok(['snapshot', 'import', 'bomb', bomb, '--dir', dir]);
    expect(Date.now() - t0).toBeLessThan(10_000);
    // Header, L1 table (16 KiB for 1 TiB) and refcounts: no L2 table at all.
    const layer = path.join(dir, 'bomb@s0.qcow2');
    expect((await stat(layer)).size).toBeLessThan(M);
    expect((await qemuCheck(layer)).code).toBe(0);
  });

  it('counts what a non-root layer would write and refuses beyond --max-write, leaving nothing behind', async () => {
    const bomb = path.join(root, 'layer-bomb.cbx');
    // 64 GiB of zero clusters on top of an empty root: 8 MiB of L2 tables.
    await forgeZeroBundle(bomb, [
      { virtualSize: 64 * G, clusterSize: 65536, zeros: [] },
      { virtualSize: 64 * G, clusterSize: 65536, zeros: [{ offset: 0, length: 64 * G }] },
    ]);
    const b = new CliHome(path.join(root, 'home-b2b'), { timeoutMs: 120_000 });
    const dir = path.join(root, 'disks-b2b');
    await mkdir(dir);
    const r = await b.cli(['snapshot', 'import', 'bomb', bomb, '--dir', dir, '--max-write', '4M', '--json']);
    expect(r.code).toBe(1);
    const e = errorOf(r);
    expect(e.code).toBe('BUDGET_EXCEEDED');
    expect(e.message).toContain(bomb);
    expect(await readdir(dir)).toEqual([]);
    expect(existsSync(path.join(b.home, 'vms', 'bomb'))).toBe(false);
    // Within a limit that covers it, the same bundle imports.
    await b.ok(['snapshot', 'import', 'bomb', bomb, '--dir', dir, '--max-write', '64M']);
    expect((await qemuCheck(path.join(dir, 'bomb@s1.qcow2'))).code).toBe(0);
  });

  it('refuses a disk above the virtual-size cap before writing anything, unless the cap is raised', async () => {
    const bomb = path.join(root, 'huge.cbx');
    await forgeZeroBundle(bomb, [{ virtualSize: 32 * T, clusterSize: 2 * M, zeros: [{ offset: 0, length: 32 * T }] }]);
    const b = new CliHome(path.join(root, 'home-b2c'), { timeoutMs: 120_000 });
    const dir = path.join(root, 'disks-b2c');
    const r = await b.cli(['snapshot', 'import', 'huge', bomb, '--dir', dir, '--json']);
    expect(errorOf(r).code).toBe('BUDGET_EXCEEDED');
    expect(existsSync(dir)).toBe(false);
    await b.ok(['snapshot', 'import', 'huge', bomb, '--dir', dir, '--max-virtual-size', '64T']);
  });
});

describe('attack 9: permissions', () => {
  it('creates the home 0700, tightens a looser one with a warning, and writes imported layers 0600', async () => {
    const h = path.join(root, 'home-p');
    const b = new CliHome(h, { timeoutMs: 120_000 });
    const dir = path.join(root, 'disks-p');
    await b.ok(['snapshot', 'import', 'web', plainBundle, '--dir', dir]);
    expect(statSync(h).mode & 0o777).toBe(0o700);
    for (const f of await readdir(dir)) expect(statSync(path.join(dir, f)).mode & 0o777, f).toBe(0o600);
    await chmod(h, 0o755);
    const r = await b.ok(['vm', 'list']);
    expect(r.stderr).toMatch(/could be read by others/);
    expect(statSync(h).mode & 0o777).toBe(0o700);
    // A directory that is also something else (here: it holds a file of the user's) is not ours to
    // change: only the warning.
    await writeFile(path.join(h, 'notes.txt'), 'mine');
    await chmod(h, 0o755);
    const r2 = await b.ok(['vm', 'list']);
    expect(r2.stderr).toMatch(/holds more than clonebox's files/);
    expect(statSync(h).mode & 0o777).toBe(0o755);
  });
});
