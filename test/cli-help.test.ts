/**
 * Help and usage errors of the built CLI (issue #17, bug 3 and item 15): a group without its command
 * prints its help, every command's help marks required options, shows defaults in one form, describes
 * its arguments and lists the global --home; usage hints point at the failing command's own help.
 */
import { describe, expect, it } from 'vitest';
import { parseCliError, runCli } from './helpers/cli.js';
import { makeTempDir } from './helpers/temp.js';

async function cli(...args: string[]) {
  return runCli(args, { home: await makeTempDir('clonebox-help-') });
}

const GROUPS = ['vm', 'snapshot', 'team', 'key', 'dht', 'image'];

describe('a command group without its command', () => {
  it('`clonebox` alone prints the program help on stdout and exits 0', async () => {
    const r = await cli();
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: clonebox /);
    for (const g of GROUPS) expect(r.stdout).toMatch(new RegExp(`^  ${g} `, 'm'));
  });

  it.each(GROUPS)('`clonebox %s` prints its help on stderr and exits 2 (usage error)', async (group) => {
    const r = await cli(group);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`Usage: clonebox ${group} `);
    expect(r.stderr).toMatch(new RegExp(`^clonebox: error: \`clonebox ${group}\` needs a command: `, 'm'));
    expect(r.stderr).toContain(`hint: see \`clonebox ${group} --help\``);
  });

  it('with --json stdout holds the USAGE error document', async () => {
    const r = await cli('snapshot', '--json');
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toEqual({ error: { code: 'USAGE', message: expect.any(String) } });
  });
});

describe('help texts', () => {
  it('marks required options, shows defaults as (default: X) and no default for a repeatable --disk', async () => {
    const create = await cli('vm', 'create', '--help');
    expect(create.code).toBe(0);
    expect(create.stdout).toMatch(/--size <size> +virtual size, e\.g\. 20G \(required\)/);
    expect(create.stdout).toMatch(/--cluster-size <size> +qcow2 cluster size, 512 to 2M \(default: 64K\)/);
    const add = await cli('vm', 'add', '--help');
    expect(add.stdout).not.toContain('(default: [])');
    expect(add.stdout).toMatch(/--connect <uri> +libvirt connection URI \(default: qemu:\/\/\/system\)/);
    const exp = await cli('snapshot', 'export', '--help');
    expect(exp.stdout).toMatch(/--level <n> +zstd level, 1-19 \(default: 3\)/);
    expect(exp.stdout).toMatch(/-o, --output <file>[\s\S]*?stderr\) \(required\)/);
  });

  it('every command describes its arguments and lists the global --home', async () => {
    const { buildProgram } = await import('../dist/cli/main.js');
    const program = buildProgram() as import('commander').Command;
    const walk = (c: import('commander').Command): import('commander').Command[] => c.commands.flatMap((s) => [s, ...walk(s)]);
    const leaves = walk(program).filter((c) => c.commands.length === 0 && c.name() !== '__complete');
    expect(leaves.length).toBeGreaterThan(30);
    for (const c of leaves) for (const a of c.registeredArguments) expect(a.description, `${c.name()} <${a.name()}>`).not.toBe('');
    const r = await cli('snapshot', 'run', '--help');
    expect(r.stdout).toMatch(/Arguments:\n +vm +the VM/);
    expect(r.stdout).toMatch(/Global Options:[\s\S]*--home <dir> +state directory/);
  });

  it('`clonebox help snapshot export` shows that command, not the snapshot group', async () => {
    const r = await cli('help', 'snapshot', 'export');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: clonebox snapshot export \[options\] \[vm\]/);
    const withHome = await cli('--home', '/nonexistent', 'help', 'vm', 'create');
    expect(withHome.stdout).toMatch(/^Usage: clonebox vm create /);
  });
});

describe('usage errors', () => {
  it("point at the failing command's own --help", async () => {
    const r = await cli('snapshot', 'show', 'web');
    expect(r.code).toBe(2);
    expect(parseCliError(r, false).hint).toBe('see `clonebox snapshot show --help`');
    const unknown = await cli('vm', 'list', '--bogus');
    expect(parseCliError(unknown, false).hint).toBe('see `clonebox vm list --help`');
  });

  it('`snapshot restore web base` (virsh and qm habit) is pointed at --name', async () => {
    const r = await cli('snapshot', 'restore', 'web', 'base');
    expect(r.code).toBe(2);
    const e = parseCliError(r, false);
    expect(e.message).toMatch(/too many arguments/);
    expect(e.hint).toContain('`clonebox snapshot restore web --name base`');
  });
});

describe('clonebox man', () => {
  it('prints a manual page that groff formats without warnings and that names every command', async () => {
    const r = await cli('man');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^\.TH CLONEBOX 1 /);
    const { run } = await import('./helpers/process.js');
    // -P-cbou: plain text, without the overstrikes or escapes of bold and underline.
    const g = await run('groff', ['-man', '-Tutf8', '-ww', '-P-cbou'], { input: r.stdout });
    expect(g.code).toBe(0);
    expect(g.stderr).toBe('');
    const { buildProgram } = await import('../dist/cli/main.js');
    const walk = (c: import('commander').Command): import('commander').Command[] => c.commands.flatMap((s) => [s, ...walk(s)]);
    const text = g.stdout.replace(/‐/g, '-');
    for (const c of walk(buildProgram() as import('commander').Command)) {
      if (c.commands.length > 0 || c.name() === '__complete') continue;
      const name: string[] = [];
      for (let p: import('commander').Command | null = c; p; p = p.parent) name.unshift(p.name());
      expect(text, name.join(' ')).toContain(name.join(' '));
    }
  });
});
