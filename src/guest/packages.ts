/**
 * Installed packages from the package databases of Debian-like (dpkg `/var/lib/dpkg/status`) and
 * Alpine (apk `/lib/apk/db/installed`) guests, and the difference between two states with each
 * package manager's own version ordering.
 */

export type PackageManager = 'dpkg' | 'apk';

export interface PackageChange {
  name: string;
  change: 'installed' | 'removed' | 'upgraded' | 'downgraded' | 'changed';
  from: string | null;
  to: string | null;
}

/** Stanzas of an RFC 822-like file (blank-line separated `Key: value` blocks, continuation lines skipped). */
function stanzas(text: string, sep: RegExp): Map<string, string>[] {
  const out: Map<string, string>[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const m = new Map<string, string>();
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(' ') || line.startsWith('\t')) continue;
      const r = sep.exec(line);
      if (r && !m.has(r[1]!)) m.set(r[1]!, r[2]!.trim());
    }
    if (m.size) out.push(m);
  }
  return out;
}

/** name (or name:arch when a name is installed for several architectures) -> version. */
export function parseDpkgStatus(text: string): Map<string, string> {
  const rows: { name: string; arch: string; version: string }[] = [];
  for (const s of stanzas(text, /^([A-Za-z0-9-]+):(.*)$/)) {
    const name = s.get('Package');
    const version = s.get('Version');
    const status = (s.get('Status') ?? '').split(/\s+/);
    if (!name || !version || status[2] !== 'installed') continue;
    rows.push({ name, arch: s.get('Architecture') ?? '', version });
  }
  const count = new Map<string, number>();
  for (const r of rows) count.set(r.name, (count.get(r.name) ?? 0) + 1);
  return new Map(rows.map((r) => [count.get(r.name)! > 1 ? `${r.name}:${r.arch}` : r.name, r.version]));
}

export function parseApkInstalled(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const s of stanzas(text, /^([A-Za-z]):(.*)$/)) {
    const name = s.get('P');
    const version = s.get('V');
    if (name && version) out.set(name, version);
  }
  return out;
}

// ---------------------------------------------------------------- dpkg version order (deb-version(7))

function order(c: string | undefined): number {
  if (c === undefined) return 0;
  if (c === '~') return -1;
  if (/[0-9]/.test(c)) return 0;
  if (/[A-Za-z]/.test(c)) return c.charCodeAt(0);
  return c.charCodeAt(0) + 256;
}

function verrevcmp(a: string, b: string): number {
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    let firstDiff = 0;
    while ((i < a.length && !/[0-9]/.test(a[i]!)) || (j < b.length && !/[0-9]/.test(b[j]!))) {
      const ac = i < a.length && !/[0-9]/.test(a[i]!) ? order(a[i]) : 0;
      const bc = j < b.length && !/[0-9]/.test(b[j]!) ? order(b[j]) : 0;
      if (ac !== bc) return ac - bc;
      i++;
      j++;
    }
    while (a[i] === '0') i++;
    while (b[j] === '0') j++;
    while (i < a.length && /[0-9]/.test(a[i]!) && j < b.length && /[0-9]/.test(b[j]!)) {
      if (!firstDiff) firstDiff = a.charCodeAt(i) - b.charCodeAt(j);
      i++;
      j++;
    }
    if (i < a.length && /[0-9]/.test(a[i]!)) return 1;
    if (j < b.length && /[0-9]/.test(b[j]!)) return -1;
    if (firstDiff) return firstDiff;
  }
  return 0;
}

export function compareDpkg(a: string, b: string): number {
  const split = (v: string) => {
    const c = v.indexOf(':');
    const epoch = c >= 0 ? Number.parseInt(v.slice(0, c), 10) || 0 : 0;
    const rest = c >= 0 ? v.slice(c + 1) : v;
    const d = rest.lastIndexOf('-');
    return { epoch, upstream: d >= 0 ? rest.slice(0, d) : rest, revision: d >= 0 ? rest.slice(d + 1) : '' };
  };
  const x = split(a);
  const y = split(b);
  if (x.epoch !== y.epoch) return x.epoch - y.epoch;
  return verrevcmp(x.upstream, y.upstream) || verrevcmp(x.revision, y.revision);
}

// ---------------------------------------------------------------- apk version order (apk-tools version.c)

const APK_SUFFIX: Record<string, number> = { alpha: -4, beta: -3, pre: -2, rc: -1, cvs: 1, svn: 2, git: 3, hg: 4, p: 5 };

function apkTokens(v: string): (number | string)[] {
  const m = /^(.*?)(?:-r(\d+))?$/.exec(v)!;
  const out: (number | string)[] = [];
  const main = m[1]!;
  const [digits, ...suffixes] = main.split('_');
  for (const t of (digits ?? '').match(/\d+|[a-z]+/gi) ?? []) out.push(/^\d/.test(t) ? Number(t) : t);
  for (const s of suffixes) {
    const r = /^([a-z]+)(\d*)$/.exec(s);
    out.push(`~${APK_SUFFIX[r?.[1] ?? ''] ?? 0}`, Number(r?.[2] || 0));
  }
  out.push('-r', Number(m[2] ?? 0));
  return out;
}

export function compareApk(a: string, b: string): number {
  const x = apkTokens(a);
  const y = apkTokens(b);
  for (let k = 0; k < Math.max(x.length, y.length); k++) {
    const p = x[k];
    const q = y[k];
    if (p === q) continue;
    if (p === undefined) return -1;
    if (q === undefined) return 1;
    if (typeof p === 'number' && typeof q === 'number') return p - q;
    const sp = String(p);
    const sq = String(q);
    // A suffix against no suffix: _alpha, _beta, _pre, _rc sort before the plain version, the others after.
    const rank = (t: string) => (t.startsWith('~') ? Number(t.slice(1)) : t === '-r' ? 0 : null);
    const [rp, rq] = [rank(sp), rank(sq)];
    if (rp !== null && rq !== null) return rp - rq;
    if (sp === '-r') return -1; // the release comes after every version token
    if (sq === '-r') return 1;
    if (typeof p === 'number') return 1;
    if (typeof q === 'number') return -1;
    return sp < sq ? -1 : 1;
  }
  return 0;
}

export function diffPackages(manager: PackageManager, before: Map<string, string>, after: Map<string, string>): PackageChange[] {
  const cmp = manager === 'dpkg' ? compareDpkg : compareApk;
  const out: PackageChange[] = [];
  for (const [name, to] of after) {
    const from = before.get(name);
    if (from === undefined) out.push({ name, change: 'installed', from: null, to });
    else if (from !== to) {
      const c = cmp(from, to);
      out.push({ name, change: c < 0 ? 'upgraded' : c > 0 ? 'downgraded' : 'changed', from, to });
    }
  }
  for (const [name, from] of before) if (!after.has(name)) out.push({ name, change: 'removed', from, to: null });
  return out.sort((p, q) => (p.name < q.name ? -1 : p.name > q.name ? 1 : 0));
}
