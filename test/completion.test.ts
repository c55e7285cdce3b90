/**
 * Shell completion (issue #17, item 18): the bash script from `clonebox completion bash`, loaded into a
 * real bash and driven through COMP_WORDS/COMP_CWORD as bash does at a Tab, completes commands,
 * options, and VM and snapshot names from the home; zsh and fish scripts are generated from the same
 * command definitions and hand the same words to `clonebox __complete`.
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CLI_PATH } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { makeTempDir } from './helpers/temp.js';

let bin: string;
let home: string;
let script: string;

/** COMPREPLY after completing `line` (the last word is the one under the cursor, maybe empty). */
async function tab(line: string, env: NodeJS.ProcessEnv = {}): Promise<string[]> {
  const words = line.split(' ');
  const prog = [
    script,
    `COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')})`,
    `COMP_CWORD=${words.length - 1}`,
    `COMP_LINE='${line}'`,
    '_clonebox',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: bash, not a template
    'printf "%s\\n" "${COMPREPLY[@]}"',
  ].join('\n');
  const r = await run('bash', ['--norc', '--noprofile', '-c', prog], {
    env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, CLONEBOX_HOME: home, ...env },
    timeoutMs: 60_000,
  });
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.split('\n').filter((l) => l !== '');
}

beforeAll(async () => {
  const root = await makeTempDir('clonebox-completion-');
  bin = path.join(root, 'bin');
  home = path.join(root, 'home');
  await mkdir(bin);
  // `clonebox` on PATH, as after `npm link`.
  await writeFile(path.join(bin, 'clonebox'), `#!/bin/sh\nexec "${process.execPath}" "${CLI_PATH}" "$@"\n`);
  await chmod(path.join(bin, 'clonebox'), 0o755);
  const cb = (...args: string[]) => run(process.execPath, [CLI_PATH, '--home', home, ...args]);
  for (const args of [
    ['vm', 'create', 'web', '--size', '1M'],
    ['vm', 'create', 'db', '--size', '1M'],
    ['snapshot', 'create', 'web', '--name', 'base'],
    ['snapshot', 'create', 'web', '--name', 'before-upgrade'],
  ]) {
    const r = await cb(...args);
    expect(r.code, r.stderr).toBe(0);
  }
  const s = await run(process.execPath, [CLI_PATH, 'completion', 'bash']);
  expect(s.code, s.stderr).toBe(0);
  script = s.stdout;
});

describe('bash completion', () => {
  it('registers itself for clonebox', async () => {
    const r = await run('bash', ['--norc', '--noprofile', '-c', `${script}\ncomplete -p clonebox`]);
    expect(r.stdout.trim()).toBe('complete -F _clonebox clonebox');
  });

  it('completes commands and subcommands from the command definitions', async () => {
    expect(await tab('clonebox ')).toEqual(expect.arrayContaining(['vm', 'snapshot', 'team', 'key', 'dht', 'image', 'demo', 'completion', 'time-travel']));
    expect(await tab('clonebox ')).not.toContain('__complete');
    expect(await tab('clonebox sn')).toEqual(['snapshot']);
    expect((await tab('clonebox snapshot re')).sort()).toEqual(['restore']);
    expect((await tab('clonebox snapshot ')).length).toBeGreaterThan(15);
  });

  it("completes a command's options, global ones included", async () => {
    const opts = await tab('clonebox snapshot restore web --');
    expect(opts).toEqual(expect.arrayContaining(['--name', '--at', '--yes', '--json', '--home', '--help']));
    expect(await tab('clonebox vm create x --cl')).toEqual(['--cluster-size']);
  });

  it('completes VM names, snapshot names of the VM given, and `current` for diff --to', async () => {
    expect((await tab('clonebox snapshot list ')).sort()).toEqual(['db', 'web']);
    expect(await tab('clonebox vm show w')).toEqual(['web']);
    expect((await tab('clonebox snapshot restore web --name ')).sort()).toEqual(['base', 'before-upgrade']);
    expect(await tab('clonebox snapshot restore web --name bef')).toEqual(['before-upgrade']);
    expect((await tab('clonebox snapshot diff web --from base --to ')).sort()).toEqual(['base', 'before-upgrade', 'current']);
    expect(await tab('clonebox snapshot promote web b')).toEqual(expect.arrayContaining(['base', 'before-upgrade']));
    // A new VM's name is not completed from the existing ones.
    expect(await tab('clonebox vm create ')).toEqual([]);
  });

  it('reads the home from --home on the line', async () => {
    const other = await makeTempDir('clonebox-completion-empty-');
    expect(await tab(`clonebox --home ${other} vm show `)).toEqual([]);
    expect((await tab(`clonebox vm show --home ${home} `)).sort()).toEqual(['db', 'web']);
  });

  it('falls back to file names for file arguments and after --', async () => {
    const dir = await makeTempDir('clonebox-completion-files-');
    await writeFile(path.join(dir, 'web.cbx'), '');
    expect(await tab(`clonebox snapshot verify ${dir}/we`)).toEqual([`${dir}/web.cbx`]);
    expect(await tab(`clonebox snapshot run web -- ${dir}/w`)).toEqual([`${dir}/web.cbx`]);
  });

  it('offers nothing, and prints no error, for an unknown VM or an unusable home', async () => {
    expect(await tab('clonebox snapshot restore nosuchvm --name ')).toEqual([]);
    expect(await tab('clonebox snapshot list ', { CLONEBOX_HOME: '/proc/nonexistent' })).toEqual([]);
  });
});

describe('zsh and fish scripts', () => {
  it.each(['zsh', 'fish'])('%s: the script hands the words to `clonebox __complete --`', async (shell) => {
    const r = await run(process.execPath, [CLI_PATH, 'completion', shell]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('clonebox __complete -- ');
    expect(r.stdout).toContain(shell === 'zsh' ? 'compdef _clonebox clonebox' : 'complete -c clonebox');
  });

  it('an unknown shell is a usage error', async () => {
    const r = await run(process.execPath, [CLI_PATH, 'completion', 'tcsh']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/clonebox: error: .*tcsh/);
  });
});
