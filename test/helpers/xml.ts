/**
 * XML compared as a document rather than as text, for the domain XML tests.
 */
import { XMLParser } from 'fast-xml-parser';

/**
 * A canonical form for "semantically identical": element names, attributes as ordered [name, value]
 * pairs, children in order, text of leaf elements verbatim, indentation ignored.
 */
const canonParser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  commentPropName: '#comment',
});
type Canon = { tag: string; attrs: [string, string][]; children: Canon[] } | { text: string } | { comment: string };
export function canon(xml: string): Canon[] {
  const walk = (nodes: Record<string, unknown>[]): Canon[] => {
    const hasEl = nodes.some((n) => Object.keys(n).some((k) => k !== '#text' && k !== ':@'));
    const out: Canon[] = [];
    for (const n of nodes) {
      if ('#text' in n) {
        if (!hasEl || String(n['#text']).trim() !== '') out.push({ text: String(n['#text']) });
        continue;
      }
      if ('#comment' in n) {
        out.push({ comment: JSON.stringify(n['#comment']) });
        continue;
      }
      const tag = Object.keys(n).find((k) => k !== ':@')!;
      const attrs = Object.entries((n[':@'] as Record<string, string> | undefined) ?? {});
      out.push({ tag, attrs, children: walk(n[tag] as Record<string, unknown>[]) });
    }
    return out;
  };
  return walk(canonParser.parse(xml) as Record<string, unknown>[]);
}
