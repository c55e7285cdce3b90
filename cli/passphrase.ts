/**
 * Where the CLI gets a bundle's key or passphrase, as restic users expect (RESTIC_PASSWORD*):
 *
 *   --key-file F                   a 32-byte key file
 *   --passphrase-file F            a passphrase file; `-` reads it from stdin
 *   CLONEBOX_PASSPHRASE            the passphrase itself (visible to this user's processes: prefer the others)
 *   CLONEBOX_PASSPHRASE_FILE       a passphrase file
 *   CLONEBOX_PASSPHRASE_COMMAND    a shell command whose standard output is the passphrase
 *   a prompt                       with echo off, when stdin and stderr are a terminal and nothing else gave one
 *
 * Flags win over the environment; two environment variables at once are a usage error. A passphrase
 * from the environment or a command counts as given: a plain bundle is then refused unless
 * --allow-plain (an encrypted bundle was expected). The bytes read here are wiped after the call;
 * the library wipes its own copies (src/api/bundles.ts).
 */
import { CloneboxError, type KeyOptions } from '../src/index.js';

export interface KeyFlags {
  passphraseFile?: string;
  keyFile?: string;
  allowPlain?: boolean;
  allowInsecureKeyFile?: boolean;
}

/** Key options for one call, and the wipe of what this module read (call it when the call settled). */
export interface CliKey {
  opts: KeyOptions;
  wipe(): void;
}

const MAX_PASSPHRASE = 64 * 1024;

/** One trailing newline (CRLF too) goes, as restic does with password files and commands. */
function trimmed(b: Buffer): Buffer {
  let end = b.length;
  if (end > 0 && b[end - 1] === 0x0a) end--;
  if (end > 0 && b[end - 1] === 0x0d) end--;
  const out = Buffer.from(b.subarray(0, end));
  b.fill(0);
  return out;
}

async function readStdin(): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of process.stdin) {
    const c = chunk as Buffer;
    parts.push(c);
    n += c.length;
    if (n > MAX_PASSPHRASE) throw CloneboxError.USAGE(`the passphrase on stdin is longer than ${MAX_PASSPHRASE} bytes`);
  }
  const all = Buffer.concat(parts);
  for (const p of parts) p.fill(0);
  return trimmed(all);
}

async function runCommand(command: string): Promise<Buffer> {
  const { spawn } = await import('node:child_process');
  return new Promise<Buffer>((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['inherit', 'pipe', 'inherit'] });
    const parts: Buffer[] = [];
    let n = 0;
    child.stdout.on('data', (c: Buffer) => {
      parts.push(c);
      n += c.length;
      if (n > MAX_PASSPHRASE) child.kill();
    });
    child.on('error', (err) => reject(CloneboxError.USAGE(`cannot run CLONEBOX_PASSPHRASE_COMMAND: ${err.message}`)));
    child.on('close', (code, signal) => {
      const all = Buffer.concat(parts);
      for (const p of parts) p.fill(0);
      if (code !== 0 || n > MAX_PASSPHRASE) {
        all.fill(0);
        reject(
          CloneboxError.USAGE(`CLONEBOX_PASSPHRASE_COMMAND failed (${signal ?? `exit ${code}`})`, {
            hint: 'it must print the passphrase on its standard output and exit 0',
          }),
        );
        return;
      }
      resolve(trimmed(all));
    });
  });
}

/**
 * Reads a line from the terminal with echo off. Ctrl-C and Ctrl-D on an empty line give null; the
 * caller decides what no passphrase means.
 */
async function promptHidden(question: string): Promise<Buffer | null> {
  const stdin = process.stdin;
  process.stderr.write(question);
  const buf = Buffer.alloc(4096);
  let len = 0;
  const wasRaw = stdin.isRaw;
  stdin.setRawMode(true);
  stdin.resume();
  try {
    return await new Promise<Buffer | null>((resolve) => {
      const onData = (chunk: Buffer) => {
        for (const b of chunk) {
          if (b === 0x0d || b === 0x0a) {
            finish(Buffer.from(buf.subarray(0, len)));
            break;
          }
          if (b === 0x03 || (b === 0x04 && len === 0)) {
            finish(null);
            break;
          }
          if (b === 0x7f || b === 0x08) {
            // Backspace: drop the last UTF-8 character, not only its last byte.
            while (len > 0 && (buf[len - 1]! & 0xc0) === 0x80) len--;
            if (len > 0) len--;
          } else if (b === 0x15)
            len = 0; // Ctrl-U
          else if (b >= 0x20 && len < buf.length) buf[len++] = b;
        }
        chunk.fill(0);
      };
      const finish = (v: Buffer | null) => {
        stdin.off('data', onData);
        resolve(v);
      };
      stdin.on('data', onData);
    });
  } finally {
    buf.fill(0);
    stdin.setRawMode(wasRaw);
    stdin.pause();
    process.stderr.write('\n');
  }
}

function canPrompt(stdinTaken: boolean): boolean {
  return !stdinTaken && Boolean(process.stdin.isTTY) && Boolean(process.stderr.isTTY);
}

/**
 * The key options of a bundle command. `encrypt`: export --encrypt (a passphrase is needed now, and a
 * typed one is asked twice); otherwise import, verify or inspect (a prompt is offered to the library,
 * which asks only when the bundle needs a passphrase). `stdinTaken`: the bundle itself comes on stdin.
 */
export async function keyOptions(o: KeyFlags, use: 'encrypt' | 'decrypt' | 'none', stdinTaken: boolean): Promise<CliKey> {
  const wipes: Buffer[] = [];
  const done: CliKey = {
    opts: {},
    wipe: () => {
      for (const b of wipes) b.fill(0);
    },
  };
  const flags: KeyOptions = {
    ...(o.allowPlain ? { allowPlain: true } : {}),
    ...(o.allowInsecureKeyFile ? { allowInsecureKeyFile: true } : {}),
  };
  const bytes = (b: Buffer): KeyOptions => {
    wipes.push(b);
    if (b.length === 0) throw CloneboxError.USAGE('the passphrase is empty');
    return { passphrase: b };
  };
  if (o.keyFile !== undefined && o.passphraseFile !== undefined) throw CloneboxError.USAGE('give either --passphrase-file or --key-file, not both');
  if (o.keyFile !== undefined) {
    done.opts = { ...flags, keyFile: o.keyFile };
    return done;
  }
  if (o.passphraseFile === '-') {
    if (stdinTaken) throw CloneboxError.USAGE('--passphrase-file - reads stdin, which already carries the bundle', { hint: 'give the passphrase in a file' });
    done.opts = { ...flags, ...bytes(await readStdin()) };
    return done;
  }
  if (o.passphraseFile !== undefined) {
    done.opts = { ...flags, passphraseFile: o.passphraseFile };
    return done;
  }
  if (use === 'none') {
    done.opts = flags;
    return done;
  }
  const env = (['CLONEBOX_PASSPHRASE', 'CLONEBOX_PASSPHRASE_FILE', 'CLONEBOX_PASSPHRASE_COMMAND'] as const).filter((k) => process.env[k]);
  if (env.length > 1) throw CloneboxError.USAGE(`set only one of ${env.join(', ')}`);
  if (env[0] === 'CLONEBOX_PASSPHRASE') done.opts = { ...flags, ...bytes(Buffer.from(process.env.CLONEBOX_PASSPHRASE!, 'utf8')) };
  else if (env[0] === 'CLONEBOX_PASSPHRASE_FILE') done.opts = { ...flags, passphraseFile: process.env.CLONEBOX_PASSPHRASE_FILE! };
  else if (env[0] === 'CLONEBOX_PASSPHRASE_COMMAND') done.opts = { ...flags, ...bytes(await runCommand(process.env.CLONEBOX_PASSPHRASE_COMMAND!)) };
  else if (canPrompt(stdinTaken)) {
    if (use === 'encrypt') {
      const first = await promptHidden('passphrase for the new bundle: ');
      if (first === null) throw CloneboxError.ABORTED('no passphrase given');
      wipes.push(first);
      const again = await promptHidden('the same passphrase again: ');
      if (again === null) throw CloneboxError.ABORTED('no passphrase given');
      wipes.push(again);
      if (!first.equals(again)) throw CloneboxError.USAGE('the two passphrases differ');
      done.opts = { ...flags, ...bytes(first) };
    } else {
      done.opts = {
        ...flags,
        askPassphrase: async (file) => {
          const typed = await promptHidden(`passphrase for ${file}: `);
          if (typed) wipes.push(typed);
          return typed;
        },
      };
    }
  } else done.opts = flags;
  return done;
}
