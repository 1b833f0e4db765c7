/** The subscription patterns a delivery on `channel` matches: itself, `parent/*` and every `ancestor/**`. */
export function patternsFor(channel: string): string[] {
  const segments = channel.split('/');
  const out = [channel];
  for (let i = segments.length - 1; i > 0; i--) {
    const prefix = segments.slice(0, i).join('/');
    if (i === segments.length - 1) out.push(prefix + '/*');
    out.push(prefix + '/**');
  }
  return out;
}

/** Whether a subscription `pattern` (possibly ending in `*` or `**`) matches `channel`. */
export function matches(pattern: string, channel: string): boolean {
  return patternsFor(channel).includes(pattern);
}
