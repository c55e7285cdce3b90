/**
 * `clonebox team create/join/show/invite` through the CLI: the contract's JSON, file modes, bad
 * invites and names refused as usage errors with nothing written. No network is used.
 */
import { existsSync, statSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Z32_ALPHABET } from '../src/sync/z32.js';
import { cb, parseCliError, parseJsonOutput, runCli } from './helpers/cli.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

afterAll(cleanupTempDirs);

interface TeamShow {
  team: string;
  self: { name: string; public_key: string };
  members: unknown[];
  bootstrap: string[];
}

describe('team CLI', () => {
  it('creates a team, joins it from a second home, and shows both', async () => {
    const dir = await makeTempDir('clonebox-sync-team-');
    const h1 = path.join(dir, 'h1');
    const h2 = path.join(dir, 'h2');

    const created = await cb(h1, ['team', 'create', 'alpha', '--name', 'ws-one', '--json']);
    expect(created.code, created.stderr).toBe(0);
    const doc = parseJsonOutput<{ team: string; invite: string }>(created);
    expect(Object.keys(doc).sort()).toEqual(['invite', 'team']);
    expect(doc.team).toBe('alpha');
    expect(doc.invite).toMatch(/^cbi-[ybndrfg8ejkmcpqxot1uwisza345h769]+$/);

    // Secrets are private to the user.
    expect(statSync(path.join(h1, 'teams', 'alpha.json')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(h1, 'identity', 'identity.json')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(h1, 'identity')).mode & 0o777).toBe(0o700);

    const joined = await cb(h2, ['team', 'join', 'alpha', '--invite', doc.invite, '--name', 'ws-two']);
    expect(joined.code, joined.stderr).toBe(0);
    expect(joined.stdout).toContain('joined team alpha as ws-two');

    const show1 = parseJsonOutput<TeamShow>(await cb(h1, ['team', 'show', 'alpha', '--json']));
    const show2 = parseJsonOutput<TeamShow>(await cb(h2, ['team', 'show', 'alpha', '--json']));
    expect(show1.team).toBe('alpha');
    expect(show1.self.name).toBe('ws-one');
    expect(show2.self.name).toBe('ws-two');
    expect(show1.self.public_key).toMatch(/^[0-9a-f]{64}$/);
    expect(show2.self.public_key).toMatch(/^[0-9a-f]{64}$/);
    expect(show1.self.public_key).not.toBe(show2.self.public_key);
    expect(show1.members).toEqual([]);
    expect(show2.members).toEqual([]);

    // Both homes hold the same team secret; the invite can be printed again.
    const t1 = JSON.parse(await readFile(path.join(h1, 'teams', 'alpha.json'), 'utf8'));
    const t2 = JSON.parse(await readFile(path.join(h2, 'teams', 'alpha.json'), 'utf8'));
    expect(t2.secret).toBe(t1.secret);
    const again = await cb(h2, ['team', 'invite', 'alpha']);
    expect(again.stdout.trim()).toBe(doc.invite);

    // Joining again with the same invite is harmless; the same name with another team's invite is not.
    expect((await cb(h2, ['team', 'join', 'alpha', '--invite', doc.invite])).code).toBe(0);
    const other = parseJsonOutput<{ invite: string }>(await cb(h1, ['team', 'create', 'beta', '--json']));
    const clash = await cb(h2, ['team', 'join', 'alpha', '--invite', other.invite, '--json']);
    expect(clash.code).toBe(1);
    expect(parseCliError(clash, true).code).toBe('TEAM_EXISTS');
    const dup = await cb(h1, ['team', 'create', 'alpha', '--name', 'renamed', '--json']);
    expect(dup.code).toBe(1);
    expect(parseCliError(dup, true).code).toBe('TEAM_EXISTS');

    // Human output of show.
    const human = await cb(h1, ['team', 'show', 'alpha']);
    expect(human.stdout).toContain('this workstation: ws-one'); // the failed create renamed nothing
    const missing = await cb(h1, ['team', 'show', 'nope', '--json']);
    expect(missing.code).toBe(1);
    expect(parseCliError(missing, true).code).toBe('TEAM_NOT_FOUND');
  });

  it('takes the invite from a file or stdin, warns when it is on the command line, and prints it alone (attack 10)', async () => {
    const dir = await makeTempDir('clonebox-sync-invite-');
    const created = await cb(path.join(dir, 'a'), ['team', 'create', 'alpha', '--name', 'ws-one']);
    expect(created.code, created.stderr).toBe(0);
    const lines = created.stdout.split('\n');
    const invite = lines.find((l) => l.startsWith('cbi-'))!;
    expect(invite).toMatch(/^cbi-[ybndrfg8ejkmcpqxot1uwisza345h769]+$/);
    // The secret stands alone on its line: never inside a command one would paste into a shell.
    expect(lines.filter((l) => l.includes(invite))).toEqual([invite]);
    expect(created.stdout).toContain('--invite-file FILE');

    const file = path.join(dir, 'invite.txt');
    await writeFile(file, `\n${invite}\n`, { mode: 0o600 });
    const fromFile = await cb(path.join(dir, 'b'), ['team', 'join', 'alpha', '--invite-file', file, '--json']);
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect(fromFile.stderr).toBe('');
    const fromStdin = await runCli(['team', 'join', 'alpha', '--invite', '-', '--json'], { home: path.join(dir, 'c'), input: `${invite}\n` });
    expect(fromStdin.code, fromStdin.stderr).toBe(0);
    expect(fromStdin.stderr).toBe('');
    const stdinFile = await runCli(['team', 'join', 'alpha', '--invite-file', '-', '--json'], { home: path.join(dir, 'd'), input: invite });
    expect(stdinFile.code, stdinFile.stderr).toBe(0);
    for (const h of ['b', 'c', 'd']) {
      const t = JSON.parse(await readFile(path.join(dir, h, 'teams', 'alpha.json'), 'utf8')) as { secret: string };
      expect(t.secret).toBe((JSON.parse(await readFile(path.join(dir, 'a', 'teams', 'alpha.json'), 'utf8')) as { secret: string }).secret);
    }
    // Still accepted on argv, with a warning.
    const argv = await cb(path.join(dir, 'e'), ['team', 'join', 'alpha', '--invite', invite]);
    expect(argv.code, argv.stderr).toBe(0);
    expect(argv.stderr).toMatch(/^clonebox: warning: an invite on the command line is visible to other users/);
    // Neither, both, an empty file: usage errors, nothing written.
    for (const args of [[], ['--invite', invite, '--invite-file', file]]) {
      const r = await cb(path.join(dir, 'f'), ['team', 'join', 'alpha', ...args, '--json']);
      expect(r.code).toBe(2);
      expect(parseCliError(r, true).code).toBe('USAGE');
    }
    const empty = path.join(dir, 'empty.txt');
    await writeFile(empty, '\n\n');
    const r = await cb(path.join(dir, 'f'), ['team', 'join', 'alpha', '--invite-file', empty, '--json']);
    expect(r.code).toBe(2);
    expect(parseCliError(r, true)).toMatchObject({ code: 'BAD_INVITE', message: `no invite in ${empty} (it is empty)` });
    expect(existsSync(path.join(dir, 'f', 'teams'))).toBe(false);
  });

  it('joins one team once, and leaves it (issue #17 item 17)', async () => {
    const dir = await makeTempDir('clonebox-sync-leave-');
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    const invite = parseJsonOutput<{ invite: string }>(await cb(a, ['team', 'create', 'alpha', '--json'])).invite;
    const file = path.join(dir, 'invite.txt');
    await writeFile(file, invite, { mode: 0o600 });
    expect((await cb(b, ['team', 'join', 'alpha', '--invite-file', file])).code).toBe(0);
    // The same team under a second local name: refused, nothing written.
    const twice = await cb(b, ['team', 'join', 'again', '--invite-file', file, '--json']);
    expect(twice.code).toBe(1);
    expect(parseCliError(twice, true)).toMatchObject({ code: 'TEAM_EXISTS', message: 'this workstation is in that team already, as team alpha' });
    expect(existsSync(path.join(b, 'teams', 'again.json'))).toBe(false);
    // Leaving needs a confirmation without a terminal, then forgets the secret and the sync state.
    await mkdir(path.join(b, 'sync', 'alpha', 'catalog'), { recursive: true });
    const asked = await cb(b, ['team', 'leave', 'alpha', '--json']);
    expect(parseCliError(asked, true).code).toBe('NEEDS_CONFIRMATION');
    const left = await cb(b, ['team', 'leave', 'alpha', '--yes', '--json']);
    expect(left.code, left.stderr).toBe(0);
    expect(parseJsonOutput(left)).toEqual({ team: 'alpha', left: true });
    expect(existsSync(path.join(b, 'teams', 'alpha.json'))).toBe(false);
    expect(existsSync(path.join(b, 'sync', 'alpha'))).toBe(false);
    expect(parseJsonOutput<string[]>(await cb(b, ['team', 'list', '--json']))).toEqual([]);
    expect(parseCliError(await cb(b, ['team', 'leave', 'alpha', '--yes', '--json']), true).code).toBe('TEAM_NOT_FOUND');
    // Then it can join under the other name.
    expect((await cb(b, ['team', 'join', 'again', '--invite-file', file])).code).toBe(0);
  });

  it('carries the team bootstrap setting in the invite', async () => {
    const dir = await makeTempDir('clonebox-sync-team-');
    const created = parseJsonOutput<{ invite: string }>(
      await cb(path.join(dir, 'a'), ['team', 'create', 'lan', '--bootstrap', '127.0.0.1:40001', '--bootstrap', 'localhost:40002', '--json']),
    );
    const joined = await cb(path.join(dir, 'b'), ['team', 'join', 'lan', '--invite', created.invite, '--json']);
    expect(joined.code, joined.stderr).toBe(0);
    expect(parseJsonOutput<TeamShow>(joined).bootstrap).toEqual(['127.0.0.1:40001', '127.0.0.1:40002']);
    // --bootstrap at join overrides the invite's.
    const c = await cb(path.join(dir, 'c'), ['team', 'join', 'lan', '--invite', created.invite, '--bootstrap', '127.0.0.1:40009', '--json']);
    expect(parseJsonOutput<TeamShow>(c).bootstrap).toEqual(['127.0.0.1:40009']);
    const bad = await cb(path.join(dir, 'd'), ['team', 'create', 'x', '--bootstrap', 'nope', '--json']);
    expect(bad.code).toBe(2);
    expect(existsSync(path.join(dir, 'd', 'teams', 'x.json'))).toBe(false);
  });

  it('refuses wrong invites and bad names cleanly, writing nothing', async () => {
    const dir = await makeTempDir('clonebox-sync-team-');
    const { invite } = parseJsonOutput<{ invite: string }>(await cb(path.join(dir, 'a'), ['team', 'create', 'good', '--json']));
    const body = invite.slice(4);
    const flip = (i: number) => {
      const ch = body[i]!;
      const other = Z32_ALPHABET[(Z32_ALPHABET.indexOf(ch) + 7) % 32]!;
      return `cbi-${body.slice(0, i)}${other}${body.slice(i + 1)}`;
    };
    // (Every kind of damage is covered in-process by sync-units.test.ts; here: the CLI's handling.)
    const wrong: [string, RegExp][] = [
      [flip(10), /damaged \(checksum mismatch\)/],
      [invite.slice(0, 20), /truncated/],
      ['hello', /not a clonebox invite/],
    ];
    const home = path.join(dir, 'b');
    for (const [text, message] of wrong) {
      const r = await cb(home, ['team', 'join', 'good', '--invite', text, '--json']);
      expect(r.code, text).toBe(2);
      const e = parseCliError(r, true);
      expect(e.code).toBe('BAD_INVITE');
      expect(e.message).toMatch(message);
      expect(e.hint).not.toBeNull();
    }
    // Nothing was written: no team, not even an identity.
    expect(existsSync(home)).toBe(false);

    for (const args of [
      ['team', 'create', 'bad/name'],
      ['team', 'join', 'ok', '--invite', invite, '--name', 'white space'],
    ]) {
      const r = await cb(home, [...args, '--json']);
      expect(r.code, args.join(' ')).toBe(2);
      expect(parseCliError(r, true).code).toBe('BAD_NAME');
    }
    expect(existsSync(path.join(home, 'teams'))).toBe(false);
  });
});
