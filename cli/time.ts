/**
 * Times as the CLI shows them: local time with its UTC offset, to the second
 * (`2026-11-22 10:00:05 +01:00`, a form `--at` reads back), and ages (`3 h ago`).
 */

const p2 = (n: number) => String(n).padStart(2, '0');

/** `2026-11-22 10:00:05 +01:00`: local time with the zone, so that it is unambiguous and `--at` reads it back. */
export function showTime(iso: string): string {
  const d = new Date(iso);
  const off = -d.getTimezoneOffset();
  const zone = `${off < 0 ? '-' : '+'}${p2(Math.floor(Math.abs(off) / 60))}:${p2(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())} ${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())} ${zone}`;
}

/** How long ago `iso` was, in its largest whole unit: `just now`, `42 s ago`, `5 min ago`, `3 h ago`, `2 d ago`. */
export function age(iso: string, now = Date.now()): string {
  const s = Math.floor((now - Date.parse(iso)) / 1000);
  if (s < 0) return 'in the future';
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  if (s < 86_400 * 60) return `${Math.floor(s / 86_400)} d ago`;
  if (s < 86_400 * 730) return `${Math.floor(s / (86_400 * 30))} months ago`;
  return `${Math.floor(s / (86_400 * 365))} years ago`;
}
