// The parts of sodium-native (libsodium bindings) that clonebox uses. Outputs are written into the
// first typed-array argument; functions throw on invalid sizes, decrypt throws when verification fails.
declare module 'sodium-native' {
  type Bytes = Uint8Array;

  export const crypto_generichash_BYTES: number;
  export const crypto_generichash_KEYBYTES: number;
  export function crypto_generichash(output: Bytes, input: Bytes, key?: Bytes | null): void;

  export const crypto_pwhash_SALTBYTES: number;
  export const crypto_pwhash_ALG_ARGON2ID13: number;
  export const crypto_pwhash_OPSLIMIT_MIN: number;
  export const crypto_pwhash_MEMLIMIT_MIN: number;
  export function crypto_pwhash(out: Bytes, passwd: Bytes, salt: Bytes, opslimit: number, memlimit: number, alg: number): void;
  export function crypto_pwhash_async(out: Bytes, passwd: Bytes, salt: Bytes, opslimit: number, memlimit: number, alg: number): Promise<void>;
  export const crypto_pwhash_STRBYTES: number;
  export const crypto_pwhash_OPSLIMIT_INTERACTIVE: number;
  export const crypto_pwhash_MEMLIMIT_INTERACTIVE: number;
  /** Writes a NUL-padded `$argon2id$...` string (salt and parameters included) into out (STRBYTES long). */
  export function crypto_pwhash_str_async(out: Bytes, passwd: Bytes, opslimit: number, memlimit: number): Promise<void>;
  /** Resolves true when passwd matches the hash string. */
  export function crypto_pwhash_str_verify_async(str: Bytes, passwd: Bytes): Promise<boolean>;

  export const crypto_aead_xchacha20poly1305_ietf_ABYTES: number;
  export const crypto_aead_xchacha20poly1305_ietf_KEYBYTES: number;
  export const crypto_aead_xchacha20poly1305_ietf_NPUBBYTES: number;
  /** Writes ciphertext || tag into c (c.length === m.length + ABYTES); returns c's length. */
  export function crypto_aead_xchacha20poly1305_ietf_encrypt(c: Bytes, m: Bytes, ad: Bytes | null, nsec: null, npub: Bytes, k: Bytes): number;
  /** Writes the plaintext into m (m.length === c.length - ABYTES); throws when the tag does not verify. */
  export function crypto_aead_xchacha20poly1305_ietf_decrypt(m: Bytes, nsec: null, c: Bytes, ad: Bytes | null, npub: Bytes, k: Bytes): number;

  /** XChaCha20 keystream XOR from 64-byte block `ic` (the AEAD's message starts at block 1). */
  export function crypto_stream_xchacha20_xor_ic(c: Bytes, m: Bytes, n: Bytes, ic: number, k: Bytes): void;

  export function randombytes_buf(buf: Bytes): void;
  export function sodium_memzero(buf: Bytes): void;
}
