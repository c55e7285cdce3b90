/**
 * `snapshot sync` when nobody answers (issue 17, bug 8): with no teammate online it fails with NO_PEERS
 * once its wait is over (and says on a terminal what it waits for), instead of exiting 0 in silence
 * after 300 s; an unreachable bootstrap is DHT_UNREACHABLE within seconds, not at the whole timeout.
 * A private DHT on 127.0.0.1 only.
 */
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI_PATH, cb, parseCliError } from './helpers/cli.js';
import { startBootstrapCli } from './helpers/dht.js';
import { run } from './helpers/process.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

afterAll(cleanupTempDirs);

describe('snapshot sync with nobody online (issue 17)', () => {
  it('fails with NO_PEERS after its wait, and shows on a terminal what it waits for', async () => {
    const dir = await makeTempDir('clonebox-nopeers-');
    const home = path.join(dir, 'h');
    const bs = await startBootstrapCli(path.join(dir, 'bs'));
    try {
      const created = await cb(home, ['team', 'create', 'crew', '--name', 'ws-a']);
      expect(created.code, created.stderr).toBe(0);
      const bootstrap = `${bs.address.host}:${bs.address.port}`;
      const t0 = Date.now();
      const r = await cb(home, ['snapshot', 'sync', '--team', 'crew', '--bootstrap', bootstrap, '--timeout', '3', '--json'], 60_000);
      expect(r.code, r.stderr).toBe(1);
      expect(parseCliError(r, true).code).toBe('NO_PEERS');
      expect(r.stderr).toContain('no teammate of team crew came online within');
      expect(Date.now() - t0).toBeLessThan(30_000);

      // On a terminal (script(1) gives it one) the wait is shown while it lasts.
      const cmd = [process.execPath, CLI_PATH, '--home', home, 'snapshot', 'sync', '--team', 'crew', '--bootstrap', bootstrap, '--timeout', '3']
        .map((a) => `'${a}'`)
        .join(' ');
      const tty = await run('script', ['-qec', cmd, '/dev/null'], { timeoutMs: 60_000 });
      expect(tty.code, tty.stdout).toBe(1);
      expect(tty.stdout).toContain('waiting for a teammate of team crew to come online');
      expect(tty.stdout).toContain('clonebox: error: no teammate of team crew came online');
    } finally {
      await bs.stop();
    }
  });

  it('an unreachable bootstrap is DHT_UNREACHABLE within seconds (default timeout)', async () => {
    const dir = await makeTempDir('clonebox-nodht-');
    const home = path.join(dir, 'h');
    expect((await cb(home, ['team', 'create', 'crew', '--name', 'ws-a'])).code).toBe(0);
    const t0 = Date.now();
    const r = await cb(home, ['snapshot', 'sync', '--team', 'crew', '--bootstrap', '127.0.0.1:1', '--json'], 60_000);
    expect(r.code, r.stderr).toBe(1);
    expect(parseCliError(r, true).code).toBe('DHT_UNREACHABLE');
    expect(r.stderr).toContain('127.0.0.1:1');
    expect(Date.now() - t0).toBeLessThan(30_000);
  });
});
