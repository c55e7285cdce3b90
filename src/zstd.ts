/**
 * The one loader of the native zstd binding (zstd-napi), shared by the qcow2 compressed-cluster decoder
 * (qcow2/compressed.ts) and the frame codec of bundles and sync (content/codec.ts). A base module, so
 * that qcow2/ need not import anything above it.
 *
 * Loaded on first use only: commands that never meet zstd data do not pay for the native module.
 */
import { createRequire } from 'node:module';
import { CloneboxError } from './errors.js';

/** The parts of zstd-napi's native binding clonebox uses (see node_modules/zstd-napi/binding.d.ts). */
export interface ZstdBinding {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => ZstdDCtx;
  compressBound(size: number): number;
  ResetDirective: { sessionOnly: number };
}

export interface ZstdDCtx {
  decompress(dst: Uint8Array, src: Uint8Array): number;
  /** [0 when a frame is complete, bytes produced, bytes consumed] */
  decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number];
  reset(directive: number): void;
}

let binding: ZstdBinding | null = null;

export function zstdBinding(): ZstdBinding {
  if (!binding) {
    try {
      // A named `require` so that dependency checkers (knip) see the package is used.
      const require = createRequire(import.meta.url);
      binding = require('zstd-napi/binding') as ZstdBinding;
    } catch (err) {
      throw new CloneboxError('INTERNAL', `zstd support is not available (${(err as Error).message})`, {
        hint: 'reinstall clonebox with `npm ci` so that zstd-napi builds',
      });
    }
  }
  return binding;
}
