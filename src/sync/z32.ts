/**
 * z-base-32 (the human-oriented base32 of Zooko O'Whielacronx, also used by Hypercore ids): lowercase,
 * no padding, letters and digits chosen to avoid look-alikes. 5 bits per character, most significant first.
 */
export const Z32_ALPHABET = 'ybndrfg8ejkmcpqxot1uwisza345h769';

const DECODE = new Map<string, number>([...Z32_ALPHABET].map((ch, i) => [ch, i]));

export function z32Encode(bytes: Uint8Array): string {
  let out = '';
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += Z32_ALPHABET[(acc >>> bits) & 31];
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += Z32_ALPHABET[(acc << (5 - bits)) & 31];
  return out;
}

/** Decodes z-base-32 (case-insensitive). Throws a RangeError naming the first bad character's position. */
export function z32Decode(text: string): Buffer {
  const out: number[] = [];
  let acc = 0;
  let bits = 0;
  const lower = text.toLowerCase();
  for (let i = 0; i < lower.length; i++) {
    const v = DECODE.get(lower[i]!);
    if (v === undefined) throw new RangeError(`character ${JSON.stringify(text[i])} at position ${i + 1} is not z-base-32`);
    acc = (acc << 5) | v;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >>> bits) & 255);
    }
    acc &= (1 << bits) - 1;
  }
  // Leftover bits (fewer than 8) must be zero padding, or the text was not produced by z32Encode.
  if (acc !== 0) throw new RangeError('trailing bits are not zero');
  return Buffer.from(out);
}
