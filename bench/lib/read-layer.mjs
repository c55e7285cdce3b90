#!/usr/bin/env node
/**
 * The clonebox side of qcow2-read: reads ALL allocated data of one qcow2 file (this file alone, as the
 * export pipeline does), consuming every data byte through a cheap checksum, and prints one JSON line.
 *
 *   node bench/lib/read-layer.mjs FILE [--mode runs|stream] [--opts JSON]
 *
 *   --verify RAW  also compares every chunk with the same range of RAW (qemu-img convert output)
 *
 * runs:   Qcow2Image.runs() + readRun() one run at a time (the plain reader API).
 * stream: readData() from src/qcow2/stream.ts (batched reads, several in flight), with --opts JSON.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const file = process.argv[2];
const arg = (name, dflt) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
const mode = arg('--mode', 'stream');
/** Stream options as JSON, e.g. --opts '{"reuseBuffers":true}'. */
const streamOpts = JSON.parse(arg('--opts', '{}'));

/**
 * Consumes the bytes: sums one byte of every 64-byte cache line, so every line of every chunk is
 * loaded by this process (qemu-img in turn scans its buffers for zeros before writing). A full
 * per-byte checksum in JS would measure JS arithmetic, not reading.
 */
function checksum(buf, acc) {
  let s = acc | 0;
  for (let i = 0; i < buf.length; i += 64) s = (s + buf[i]) | 0;
  return s;
}

const t0 = process.hrtime.bigint();
const { Qcow2Image } = await import(path.join(ROOT, 'dist/src/qcow2/reader.js'));
const img = await Qcow2Image.open(file);
let bytes = 0;
let sum = 0;
let chunks = 0;
try {
  if (mode === 'runs') {
    for await (const r of img.runs()) {
      if (r.kind !== 'data') continue;
      const b = await img.readRun(r);
      sum = checksum(b, sum);
      bytes += b.length;
      chunks++;
    }
  } else {
    const { readData } = await import(path.join(ROOT, 'dist/src/qcow2/stream.js'));
    const verify = arg('--verify', null);
    if (verify) {
      // Untimed correctness check: every chunk equals the same range of qemu-img's raw output, and
      // chunks come in guest order without overlap.
      const fs = await import('node:fs');
      const fd = fs.openSync(verify, 'r');
      let next = 0;
      for await (const c of readData(img, streamOpts)) {
        if (c.offset < next) throw new Error(`chunk at ${c.offset} overlaps or goes back (expected >= ${next})`);
        const ref = Buffer.alloc(c.data.length);
        fs.readSync(fd, ref, 0, ref.length, c.offset);
        if (!ref.equals(c.data)) throw new Error(`bytes at guest offset ${c.offset} (+${c.data.length}) differ from ${verify}`);
        next = c.offset + c.data.length;
        sum = checksum(c.data, sum);
        bytes += c.data.length;
        chunks++;
      }
      fs.closeSync(fd);
    } else {
      for await (const c of readData(img, streamOpts)) {
        sum = checksum(c.data, sum);
        bytes += c.data.length;
        chunks++;
      }
    }
  }
} finally {
  await img.close();
}
const ms = Number(process.hrtime.bigint() - t0) / 1e6;
process.stdout.write(`${JSON.stringify({ mode, bytes, chunks, checksum: sum >>> 0, inner_ms: Math.round(ms * 10) / 10 })}\n`);
