/**
 * The service's TLS certificate: the files given with --tls-cert/--tls-key, else a self-signed one made
 * on first start and kept in <home>/serve/tls/ (key 0600, directory 0700). node:crypto makes keys but
 * not X.509 certificates, so the system's `openssl` makes it (an ECDSA P-256 key, valid 825 days, with
 * localhost, 127.0.0.1, ::1 and the listen address as subject names); without openssl the service asks
 * for --tls-cert/--tls-key.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { CloneboxError } from '../index.js';

export interface TlsMaterial {
  cert: string;
  key: string;
  /** SHA-256 fingerprint of the certificate, colon-separated hex as browsers and curl show it. */
  fingerprint: string;
  /** Paths the certificate and key came from. */
  certFile: string;
  keyFile: string;
  /** True when this start made the certificate. */
  created: boolean;
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 30_000 }, (err, _out, stderr) => {
      if (err) reject(Object.assign(err, { stderr: String(stderr) }));
      else resolve();
    });
  });
}

async function load(certFile: string, keyFile: string, created: boolean): Promise<TlsMaterial> {
  let cert: string;
  let key: string;
  try {
    cert = await readFile(certFile, 'utf8');
    key = await readFile(keyFile, 'utf8');
  } catch (err) {
    throw CloneboxError.TLS_UNAVAILABLE(`cannot read the TLS certificate or key (${(err as Error).message})`, { hint: 'check --tls-cert and --tls-key' });
  }
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw CloneboxError.TLS_UNAVAILABLE(`not a PEM certificate (${(err as Error).message}), ${certFile}`);
  }
  return { cert, key, fingerprint: x509.fingerprint256, certFile, keyFile, created };
}

/** Loads the given certificate and key, or the home's self-signed pair, making it on first use. */
export async function tlsMaterial(home: string, opts: { cert?: string; key?: string; host: string }): Promise<TlsMaterial> {
  if (opts.cert !== undefined || opts.key !== undefined) {
    if (opts.cert === undefined || opts.key === undefined) throw CloneboxError.USAGE('--tls-cert and --tls-key go together');
    return load(path.resolve(opts.cert), path.resolve(opts.key), false);
  }
  const dir = path.join(home, 'serve', 'tls');
  const certFile = path.join(dir, 'cert.pem');
  const keyFile = path.join(dir, 'key.pem');
  try {
    return await load(certFile, keyFile, false);
  } catch (err) {
    const missing = await open(certFile, 'r').then(
      async (fh) => {
        await fh.close();
        return false;
      },
      () => true,
    );
    if (!missing) throw err;
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const san = ['DNS:localhost', 'IP:127.0.0.1', 'IP:::1'];
  if (isIP(opts.host) && !['127.0.0.1', '::1'].includes(opts.host)) san.push(`IP:${opts.host}`);
  else if (!isIP(opts.host) && opts.host !== 'localhost') san.push(`DNS:${opts.host}`);
  const tmpKey = `${keyFile}.${process.pid}.tmp`;
  const tmpCert = `${certFile}.${process.pid}.tmp`;
  try {
    // The key file exists with mode 0600 before openssl writes into it.
    await (await open(tmpKey, 'w', 0o600)).close();
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '825',
      '-subj',
      '/CN=clonebox serve',
      '-addext',
      `subjectAltName=${san.join(',')}`,
      '-keyout',
      tmpKey,
      '-out',
      tmpCert,
    ]);
    await chmod(tmpKey, 0o600);
    await rename(tmpKey, keyFile);
    await rename(tmpCert, certFile);
  } catch (err) {
    await rm(tmpKey, { force: true });
    await rm(tmpCert, { force: true });
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw CloneboxError.TLS_UNAVAILABLE('openssl is not installed, so no self-signed certificate can be made', {
        hint: 'install openssl, or give a certificate with --tls-cert and --tls-key',
      });
    }
    throw CloneboxError.TLS_UNAVAILABLE(
      `openssl could not make a certificate: ${String((err as { stderr?: string }).stderr ?? (err as Error).message).trim()}`,
    );
  }
  return load(certFile, keyFile, true);
}
