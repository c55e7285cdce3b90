/**
 * `clonebox serve` (the Redfish snapshot service), `clonebox user` (its accounts) and `clonebox remote`
 * (a client of a remote service). The service and its client live in the library's second entry,
 * src/serve/index.ts, loaded only when one of these commands runs (hono and sodium stay out of start-up).
 */
import { readFile, stat } from 'node:fs/promises';
import type { Command } from 'commander';
import { CloneboxError, formatBytes, type SnapshotView } from '../../src/index.js';
import type { RemoteClient } from '../../src/serve/index.js';
import { confirm } from '../confirm.js';
import { interruptible } from '../interrupt.js';
import { printJson, printLine, printWarning, table } from '../output.js';
import { action } from '../run.js';

const serveEntry = () => import('../../src/serve/index.js');

/** Reads a password: from a file (first line), from stdin (first line), or asked twice on the terminal without echo. */
async function readPassword(o: { passwordFile?: string; passwordStdin?: boolean }, confirmTwice: boolean): Promise<string> {
  if (o.passwordFile !== undefined && o.passwordStdin) throw CloneboxError.USAGE('--password-file and --password-stdin exclude each other');
  if (o.passwordFile !== undefined) {
    const text = await readFile(o.passwordFile, 'utf8').catch((err: Error) => {
      throw CloneboxError.USAGE(`cannot read the password file: ${err.message}`);
    });
    return firstLine(text);
  }
  if (o.passwordStdin) {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return firstLine(Buffer.concat(chunks).toString('utf8'));
  }
  if (!process.stdin.isTTY) {
    throw CloneboxError.USAGE('no password given and no terminal to ask on', { hint: 'use --password-file FILE or --password-stdin' });
  }
  const first = await ask('Password: ');
  if (confirmTwice && (await ask('Password again: ')) !== first) throw CloneboxError.USAGE('the passwords differ');
  return first;
}

function firstLine(text: string): string {
  return text.split(/\r?\n/)[0] ?? '';
}

/** One line from the terminal with echo off. */
function ask(prompt: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    process.stderr.write(prompt);
    stdin.setRawMode(true);
    stdin.resume();
    let buf = '';
    const done = (err: Error | null) => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.removeListener('data', onData);
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(buf);
    };
    const onData = (d: Buffer) => {
      for (const ch of d.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done(null);
        if (ch === '\u0003') return done(new CloneboxError('ABORTED', 'aborted by the user'));
        if (ch === '\u007f' || ch === '\b') buf = buf.slice(0, -1);
        else buf += ch;
      }
    };
    stdin.on('data', onData);
  });
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the Redfish snapshot service on this home until SIGINT/SIGTERM (docs/serve.md)')
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:8443')
    .option('--tls-cert <file>', 'PEM certificate (default: a self-signed one kept in the home)')
    .option('--tls-key <file>', 'PEM private key of --tls-cert')
    .option('--insecure-http', 'plain HTTP instead of HTTPS (loopback addresses only)')
    .option('--no-schedule', 'do not run the scheduler (scheduled snapshots) in the service')
    .option('--json', 'print the address and fingerprint as JSON when listening')
    .action(
      action(async (ctx, o: { listen: string; tlsCert?: string; tlsKey?: string; insecureHttp?: boolean; schedule: boolean }) => {
        const { startService } = await serveEntry();
        await interruptible(async (signal) => {
          const svc = await startService(ctx.cb, {
            listen: o.listen,
            ...(o.tlsCert !== undefined ? { tlsCert: o.tlsCert } : {}),
            ...(o.tlsKey !== undefined ? { tlsKey: o.tlsKey } : {}),
            insecureHttp: Boolean(o.insecureHttp),
            scheduleEveryMs: o.schedule ? 60_000 : 0,
            onScheduleWarning: (message) => printWarning({ code: 'NOTICE', message }),
          });
          const info = { url: svc.url, fingerprint: svc.fingerprint, certificate: svc.certFile, certificate_created: svc.certificateCreated };
          if (ctx.json) printJson(info);
          else {
            printLine(`clonebox serve: listening on ${svc.url}`);
            if (svc.fingerprint) printLine(`certificate ${svc.certificateCreated ? 'made' : 'from'} ${svc.certFile}, SHA-256 fingerprint ${svc.fingerprint}`);
            else printLine('plain HTTP (loopback only): credentials cross the wire unencrypted');
          }
          if (!signal.aborted) await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
          await svc.close();
        });
      }),
    );

  const user = program.command('user').description('accounts of the snapshot service (clonebox serve)');
  user
    .command('add')
    .argument('<name>', 'the account name')
    .description('add an account (password from a prompt, --password-file or --password-stdin)')
    .requiredOption('--role <role>', 'Administrator, Operator or ReadOnly')
    .option('--password-file <file>', 'read the password from the first line of FILE')
    .option('--password-stdin', 'read the password from the first line of stdin')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { role: string; passwordFile?: string; passwordStdin?: boolean }) => {
        const { addAccount, listAccounts, ROLES } = await serveEntry();
        if (!(ROLES as readonly string[]).includes(o.role))
          throw CloneboxError.USAGE(`unknown role ${JSON.stringify(o.role)}`, { hint: `use one of ${ROLES.join(', ')}` });
        // Refused before the password is asked for.
        if ((await listAccounts(ctx.cb.home)).some((a) => a.name === name)) {
          throw CloneboxError.USER_EXISTS(`user ${name} already exists`, { hint: 'use `clonebox user passwd` to change the password' });
        }
        const a = await addAccount(ctx.cb.home, name, o.role as (typeof ROLES)[number], await readPassword(o, true));
        if (ctx.json) return printJson(a);
        printLine(`added user ${a.name} (${a.role})`);
      }),
    );
  user
    .command('list')
    .description('list the accounts')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx) => {
        const { listAccounts } = await serveEntry();
        const list = await listAccounts(ctx.cb.home);
        if (ctx.json) return printJson(list);
        if (list.length === 0) return printLine('no users');
        printLine(
          table(
            ['NAME', 'ROLE', 'CREATED'],
            list.map((a) => [a.name, a.role, a.created_at]),
          ),
        );
      }),
    );
  user
    .command('remove')
    .argument('<name>', 'the account name')
    .description('remove an account (its sessions end)')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string) => {
        const { removeAccount } = await serveEntry();
        const a = await removeAccount(ctx.cb.home, name);
        if (ctx.json) return printJson(a);
        printLine(`removed user ${a.name}`);
      }),
    );
  user
    .command('passwd')
    .argument('<name>', 'the account name')
    .description("change an account's password (its sessions end)")
    .option('--password-file <file>', 'read the password from the first line of FILE')
    .option('--password-stdin', 'read the password from the first line of stdin')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { passwordFile?: string; passwordStdin?: boolean }) => {
        const { changePassword, listAccounts } = await serveEntry();
        // Refused before the password is asked for.
        if (!(await listAccounts(ctx.cb.home)).some((a) => a.name === name))
          throw CloneboxError.USER_NOT_FOUND(`no such user ${name}`, { hint: 'see `clonebox user list`' });
        const a = await changePassword(ctx.cb.home, name, await readPassword(o, true));
        if (ctx.json) return printJson(a);
        printLine(`changed the password of ${a.name}`);
      }),
    );

  registerRemote(program);
}

interface RemoteOpts {
  url: string;
  credentials?: string;
  ca?: string;
  fingerprint?: string;
  insecure?: boolean;
}

/** user:password from --credentials FILE, else CLONEBOX_REMOTE_USER and CLONEBOX_REMOTE_PASSWORD. */
async function credentials(o: RemoteOpts): Promise<{ user: string; password: string }> {
  if (o.credentials !== undefined) {
    const st = await stat(o.credentials).catch(() => null);
    if (st && (st.mode & 0o077) !== 0)
      printWarning({ code: 'WARNING', message: `the credentials file can be read by other users, ${o.credentials} (chmod 600 it)` });
    const line = firstLine(
      await readFile(o.credentials, 'utf8').catch((err: Error) => {
        throw CloneboxError.USAGE(`cannot read the credentials file: ${err.message}`);
      }),
    );
    const i = line.indexOf(':');
    if (i <= 0) throw CloneboxError.USAGE(`the credentials file holds no USER:PASSWORD line, ${o.credentials}`);
    return { user: line.slice(0, i), password: line.slice(i + 1) };
  }
  const user = process.env.CLONEBOX_REMOTE_USER;
  const password = process.env.CLONEBOX_REMOTE_PASSWORD;
  if (!user || password === undefined) {
    throw CloneboxError.USAGE('no credentials for the remote service', {
      hint: 'use --credentials FILE (USER:PASSWORD) or set CLONEBOX_REMOTE_USER and CLONEBOX_REMOTE_PASSWORD',
    });
  }
  return { user, password };
}

async function withRemote<T>(o: RemoteOpts, json: boolean, label: string, fn: (c: RemoteClient) => Promise<T>): Promise<T> {
  const { RemoteClient } = await serveEntry();
  const cred = await credentials(o);
  // The task's PercentComplete on stderr (a terminal only, and not with --json).
  const tty = !json && Boolean(process.stderr.isTTY);
  let shown = false;
  const bar = tty
    ? {
        update: (percent: number, state: string) => {
          process.stderr.write(`\r\x1b[K${label}: ${state} ${percent}%`);
          shown = true;
        },
        finish: () => {
          if (shown) process.stderr.write('\r\x1b[K');
          shown = false;
        },
      }
    : null;
  const client = new RemoteClient({
    url: o.url,
    ...cred,
    ...(o.ca !== undefined ? { ca: await readFile(o.ca, 'utf8') } : {}),
    ...(o.fingerprint !== undefined ? { fingerprint: o.fingerprint } : {}),
    insecure: Boolean(o.insecure),
    onWarning: (message) => {
      bar?.finish();
      printWarning({ code: 'WARNING', message });
    },
    ...(bar ? { onProgress: bar.update } : {}),
  });
  await client.login();
  try {
    return await fn(client);
  } finally {
    bar?.finish();
    await client.logout();
  }
}

function remoteCommand(parent: Command, name: string): Command {
  return parent
    .command(name)
    .requiredOption('--url <url>', 'the service, https://HOST:PORT')
    .option('--credentials <file>', 'USER:PASSWORD on the first line (default: $CLONEBOX_REMOTE_USER, $CLONEBOX_REMOTE_PASSWORD)')
    .option('--ca <file>', "PEM certificate to trust (the service's cert.pem for a self-signed one)")
    .option('--fingerprint <sha256>', "accept the service's certificate by its SHA-256 fingerprint (as `clonebox serve` prints it)")
    .option('--insecure', 'do not check the certificate (not advised)')
    .option('--json', 'print JSON');
}

function shortTime(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function registerRemote(program: Command): void {
  const remote = program.command('remote').description('drive a remote clonebox serve');
  const snap = remote.command('snapshot').description('snapshots of a remote system');
  remoteCommand(snap, 'list')
    .argument('<system>', 'the Redfish system: the VM name on the service')
    .description('list snapshots, newest first')
    .action(
      action(async (ctx, vm: string, o: RemoteOpts) => {
        const list = await withRemote(o, ctx.json, 'list', (c) => c.list(vm));
        if (ctx.json) return printJson(list);
        if (list.length === 0) return printLine(`no snapshots of ${vm}`);
        printLine(
          table(
            ['', 'NAME', 'TYPE', 'CREATED', 'SIZE', 'PARENT', 'TAGS'],
            list.map((v: SnapshotView) => [
              v.current ? '*' : '',
              v.name,
              v.type,
              shortTime(v.created_at),
              formatBytes(v.size_bytes),
              v.parent ?? '-',
              v.tags.join(','),
            ]),
            [false, false, false, false, true, false, false],
          ),
        );
      }),
    );
  remoteCommand(snap, 'create')
    .argument('<system>', 'the Redfish system: the VM name on the service')
    .description('snapshot a remote system')
    .option('--name <name>', 'snapshot name (default snap-YYYYMMDD-HHMMSS)')
    .option('--description <text>', 'free text')
    .option('--tags <a,b>', 'comma-separated tags')
    .option('--memory', 'include memory state (running libvirt VMs)')
    .option('--quiesce', 'freeze guest filesystems through the guest agent')
    .action(
      action(async (ctx, vm: string, o: RemoteOpts & { name?: string; description?: string; tags?: string; memory?: boolean; quiesce?: boolean }) => {
        const tags = o.tags
          ? o.tags
              .split(',')
              .map((t) => t.trim())
              .filter(Boolean)
          : [];
        const v = await withRemote(o, ctx.json, 'create', (c) =>
          c.create(vm, {
            ...(o.name !== undefined ? { name: o.name } : {}),
            description: o.description ?? null,
            tags,
            memory: Boolean(o.memory),
            quiesce: Boolean(o.quiesce),
          }),
        );
        if (ctx.json) return printJson(v);
        printLine(`created snapshot ${v.name} of ${vm} (${formatBytes(v.size_bytes)})`);
      }),
    );
  remoteCommand(snap, 'revert')
    .argument('<system>', 'the Redfish system: the VM name on the service')
    .description('revert a remote system to a snapshot (discards unsnapshotted changes)')
    .requiredOption('--name <name>', 'snapshot to revert to')
    .option('--yes', 'do not ask for confirmation')
    .action(
      action(async (ctx, vm: string, o: RemoteOpts & { name: string; yes?: boolean }) => {
        await confirm(`Revert ${vm} at ${o.url} to snapshot ${o.name}? Changes made since (not snapshotted) will be discarded`, Boolean(o.yes));
        const r = await withRemote(o, ctx.json, 'revert', (c) => c.revert(vm, o.name));
        if (ctx.json) return printJson(r);
        printLine(`restored ${vm} to ${r.restored}`);
      }),
    );
  remoteCommand(snap, 'delete')
    .argument('<system>', 'the Redfish system: the VM name on the service')
    .description('delete a snapshot of a remote system')
    .requiredOption('--name <name>', 'snapshot to delete')
    .option('--recursive', 'delete its whole subtree')
    .option('--yes', 'do not ask for confirmation')
    .action(
      action(async (ctx, vm: string, o: RemoteOpts & { name: string; recursive?: boolean; yes?: boolean }) => {
        if (o.recursive) await confirm(`Delete snapshot ${o.name} of ${vm} at ${o.url} and all snapshots below it?`, Boolean(o.yes));
        const r = await withRemote(o, ctx.json, 'delete', (c) => c.delete(vm, o.name, { recursive: Boolean(o.recursive) }));
        if (ctx.json) return printJson(r);
        printLine(`deleted ${r.deleted.join(', ')}`);
      }),
    );
}
