/**
 * The README's "Using it" section runs top to bottom as a shell script (issue #17, item 14): in an
 * empty directory, with a fresh HOME (so ~/.clonebox is new), `clonebox` on PATH as the README's
 * install step puts it there (here: the built bin/clonebox.js, without npm link), and the team part's
 * private DHT on a free port of 127.0.0.1 instead of the README's 49737.
 */

import { createSocket } from 'node:dgram';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect, it } from 'vitest';
import { CLI_PATH, REPO_ROOT } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { makeTempDir } from './helpers/temp.js';

/** The ```sh blocks of one `## ` section of the README, in order. */
function shellBlocks(readme: string, heading: string): string[] {
  const start = readme.indexOf(`\n## ${heading}\n`);
  if (start < 0) throw new Error(`README has no "## ${heading}" section`);
  const rest = readme.slice(start + 1);
  const end = rest.indexOf('\n## ', 1);
  const section = end < 0 ? rest : rest.slice(0, end);
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  const { port } = s.address();
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

it('installs the command before using it', async () => {
  const readme = await readFile(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const install = shellBlocks(readme, 'Install').join('\n');
  expect(install).toMatch(/npm link|npm install -g \./);
  // Nothing in "Using it" relies on npx resolving the package by name.
  expect(shellBlocks(readme, 'Using it').join('\n')).not.toMatch(/\bnpx\b/);
});

it('runs the "Using it" section as a script', async () => {
  const readme = await readFile(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const blocks = shellBlocks(readme, 'Using it');
  expect(blocks.length).toBeGreaterThanOrEqual(3);
  const port = await freeUdpPort();
  const script = blocks.join('\n').replaceAll('49737', String(port));
  expect(script).toContain(`--bootstrap 127.0.0.1:${port}`);

  const root = await makeTempDir('clonebox-readme-');
  const bin = path.join(root, 'bin');
  const work = path.join(root, 'work');
  const home = path.join(root, 'home');
  await mkdir(bin);
  await mkdir(work);
  await mkdir(home);
  await writeFile(path.join(bin, 'clonebox'), `#!/bin/sh\nexec "${process.execPath}" "${CLI_PATH}" "$@"\n`);
  await chmod(path.join(bin, 'clonebox'), 0o755);
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH}`, HOME: home };
  delete env.CLONEBOX_HOME;
  // -e: every line must succeed; a background job left running would keep the test waiting.
  const r = await run('bash', ['--norc', '--noprofile', '-euo', 'pipefail', '-c', `${script}\nwait`], { cwd: work, env, timeoutMs: 240_000 });
  expect(r.code, `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`).toBe(0);
  // What the script did, as a reader would check it.
  expect(r.stdout).toContain('created VM web');
  expect(r.stdout).toMatch(/imported \d+ snapshots? into VM web/);
  const pulled = await run(process.execPath, [CLI_PATH, '--home', path.join(work, 'teammate'), 'snapshot', 'list', 'web', '--json']);
  expect(pulled.code, pulled.stderr).toBe(0);
  const names = (JSON.parse(pulled.stdout) as { name: string }[]).map((s) => s.name);
  expect(names).toContain('before-upgrade');
}, 300_000);
