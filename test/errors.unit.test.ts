/**
 * The error API: per-code constructors and `new CloneboxError` make the same error, the exit code
 * comes from ERROR_CODES, the stack starts at the caller, and ioError names the path and the reason.
 */
import { describe, expect, it } from 'vitest';
import { CloneboxError, ERROR_CODES, type ErrorCode, ioError, usageError } from '../src/errors.js';

describe('CloneboxError', () => {
  it('has one constructor per code, with the exit code of the table', () => {
    for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
      const cause = new Error('underneath');
      const err = CloneboxError[code](`failed, ${code}`, { hint: 'try again', cause });
      expect(err).toBeInstanceOf(CloneboxError);
      expect(err).toBeInstanceOf(Error);
      expect([err.name, err.code, err.message, err.hint, err.cause]).toEqual(['CloneboxError', code, `failed, ${code}`, 'try again', cause]);
      expect(err.exitCode).toBe(ERROR_CODES[code].exit);
      const viaNew = new CloneboxError(code, 'x');
      expect([viaNew.code, viaNew.exitCode, viaNew.hint, 'cause' in viaNew]).toEqual([code, ERROR_CODES[code].exit, undefined, false]);
    }
  });

  it('takes the exit code from the table, even when a JavaScript caller passes an exitCode option', () => {
    // The options type has no exitCode; a caller without types can still pass one, and it must not win.
    const untyped = (opts: object) => opts as { hint?: string };
    expect(new CloneboxError('USAGE', 'x').exitCode).toBe(2);
    expect(new CloneboxError('VM_BUSY', 'x', untyped({ exitCode: 2 })).exitCode).toBe(1);
    expect(new CloneboxError('DISK_NAME_CLASH', 'x', untyped({ exitCode: 1 })).exitCode).toBe(2);
    // A code that got past the type (a JavaScript caller) is an operational error, not a crash.
    expect(new CloneboxError('NO_SUCH_CODE' as ErrorCode, 'x').exitCode).toBe(1);
  });

  it('starts the stack at the caller of a per-code constructor', () => {
    function raiseHere(): never {
      throw CloneboxError.VM_NOT_FOUND('no VM, web');
    }
    let stack = '';
    try {
      raiseHere();
    } catch (err) {
      stack = (err as Error).stack ?? '';
    }
    const frames = stack.split('\n').filter((l) => l.trimStart().startsWith('at '));
    expect(frames[0]).toContain('raiseHere');
  });

  it('is subclassed with the code kept', () => {
    class Special extends CloneboxError {
      constructor(readonly extra: number) {
        super('SYNC_CHAIN', 'special');
      }
    }
    const err = new Special(3);
    expect(err).toBeInstanceOf(CloneboxError);
    expect([err.code, err.exitCode, err.extra]).toEqual(['SYNC_CHAIN', 1, 3]);
  });
});

describe('usageError and ioError', () => {
  it('usageError is USAGE, exit 2, with an optional hint', () => {
    expect([usageError('bad').code, usageError('bad').exitCode, usageError('bad').hint]).toEqual(['USAGE', 2, undefined]);
    expect(usageError('bad', 'see --help').hint).toBe('see --help');
  });

  it('ioError names the reason and the path, and passes clonebox errors through', () => {
    const enoent = Object.assign(new Error('ENOENT: gone'), { code: 'ENOENT' });
    const err = ioError(enoent, 'cannot read', '/x/y');
    expect([err.code, err.message, err.cause]).toEqual(['IO', 'cannot read: no such file, /x/y', enoent]);
    expect(ioError(Object.assign(new Error('e'), { code: 'EACCES' }), 'cannot write', '/z').message).toBe('cannot write: permission denied, /z');
    expect(ioError(new Error('odd'), 'cannot sync', '/z').message).toBe('cannot sync: odd, /z');
    const own = CloneboxError.STORE_CORRUPT('bad record, /r');
    expect(ioError(own, 'cannot read', '/r')).toBe(own);
  });
});
