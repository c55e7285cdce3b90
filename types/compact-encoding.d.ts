/**
 * Minimal, accurate typing of compact-encoding 3.x as clonebox uses it: encoders are objects with
 * preencode/encode/decode over a shared state. Decoders throw Error('Out of bounds') on short input and
 * do not check for trailing bytes (clonebox's messages.ts does).
 */
declare module 'compact-encoding' {
  namespace c {
    interface State {
      start: number;
      end: number;
      buffer: Buffer | null;
    }
    interface Encoding<T> {
      preencode(state: State, value: T): void;
      encode(state: State, value: T): void;
      decode(state: State): T;
    }
    /** Variable-length unsigned integer (1, 3, 5 or 9 bytes). */
    const uint: Encoding<number>;
    const uint8: Encoding<number>;
    const uint16: Encoding<number>;
    const uint32: Encoding<number>;
    const uint64: Encoding<number>;
    const bool: Encoding<boolean>;
    /** Length-prefixed UTF-8 text. */
    const string: Encoding<string>;
    const utf8: Encoding<string>;
    /** Length-prefixed bytes (not null: see optionalBuffer). */
    const buffer: Encoding<Buffer>;
    /** Length-prefixed bytes; null encodes as length 0, and length 0 decodes as null. */
    const optionalBuffer: Encoding<Buffer | null>;
    /** Length-prefixed bytes (a string is encoded as UTF-8); decodes to a Buffer. */
    const binary: Encoding<Buffer>;
    /** All remaining bytes, no length prefix (only valid last). */
    const raw: Encoding<Buffer>;
    const fixed32: Encoding<Buffer>;
    const fixed64: Encoding<Buffer>;
    const none: Encoding<null>;
    function fixed(n: number): Encoding<Buffer>;
    /** Length-prefixed list. */
    function array<T>(enc: Encoding<T>): Encoding<T[]>;
    function state(start?: number, end?: number, buffer?: Buffer | null): State;
    function encode<T>(enc: Encoding<T>, value: T): Buffer;
    function decode<T>(enc: Encoding<T>, buffer: Buffer): T;
  }
  export = c;
}
