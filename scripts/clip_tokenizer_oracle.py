#!/usr/bin/python3
"""Test oracle for src/clip/tokenizer.c: a re-statement of OpenAI CLIP's simple_tokenizer.py
(SimpleTokenizer.encode and clip.tokenize(truncate=True)) in plain Python + the `regex` module,
exactly as upstream except that ftfy.fix_text is skipped (carseg skips it too; see README).

  /usr/bin/python3 scripts/clip_tokenizer_oracle.py VOCAB encode TEXT...    # ids per line
  /usr/bin/python3 scripts/clip_tokenizer_oracle.py VOCAB gen N SEED OUT.json  # random cases

`gen` writes {"cases": [{"text" or "hex", "bpe_ids", "context_ids"}]} for random strings mixing
ASCII, Latin-1, Greek (with final sigma), Cyrillic, CJK, emoji, combining marks, whitespace
variants, HTML character references, contractions and special tokens, plus byte strings with
invalid UTF-8 ("hex"; the reference sees them decoded with errors='replace'): the C tests compare
against such a file (tests/data/tokenizer/oracle_cases.json: gen 800 1234).
Needs python3-regex (apt-get install python3-regex).
"""
import gzip
import html
import json
import random
import sys

import regex


def byte_to_unicode():
    """Byte -> printable character, in upstream's order: the printable bytes map to themselves
    and come first, the other 68 bytes follow as chr(256 + k). The order defines the ids 0..255."""
    keep = list(range(0x21, 0x7f)) + list(range(0xa1, 0xad)) + list(range(0xae, 0x100))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Oracle:
    PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)

    def __init__(self, path):
        raw = open(path, 'rb').read()
        if raw[:2] == b'\x1f\x8b':
            raw = gzip.decompress(raw)
        lines = raw.decode('utf-8').split('\n')[1:49152 - 256 - 2 + 1]
        merges = [tuple(l.split()) for l in lines]
        self.b2u = byte_to_unicode()
        base = list(self.b2u.values())
        vocab = base + [v + '</w>' for v in base] + [''.join(m) for m in merges]
        vocab += ['<|startoftext|>', '<|endoftext|>']
        self.ids = {s: i for i, s in enumerate(vocab)}
        self.rank = {m: i for i, m in enumerate(merges)}
        self.special = {'<|startoftext|>', '<|endoftext|>'}

    def bpe(self, tok):
        if tok in self.special:
            return [tok]
        word = list(tok[:-1]) + [tok[-1] + '</w>']
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.rank.get(p, float('inf')))
            if best not in self.rank:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def encode(self, text):
        text = html.unescape(html.unescape(text)).strip()      # basic_clean without ftfy
        text = regex.sub(r'\s+', ' ', text).strip().lower()   # whitespace_clean, lower
        ids = []
        for tok in regex.findall(self.PAT, text):
            tok = ''.join(self.b2u[b] for b in tok.encode('utf-8'))
            ids.extend(self.ids[s] for s in self.bpe(tok))
        return ids

    def tokenize(self, text, ctx=77):
        t = [self.ids['<|startoftext|>']] + self.encode(text) + [self.ids['<|endoftext|>']]
        if len(t) > ctx:
            t = t[:ctx]
            t[-1] = self.ids['<|endoftext|>']
        return t


PIECES = [
    'a', 'photo', 'of', 'the', 'cat', 'Dog', 'HELLO', 'wörld', 'naïve', 'Ærø', 'straße', 'İstanbul',
    'ΟΔΟΣ', 'Σ', 'σοφός', 'ΣΑΣ.', 'Москва', 'ПРИВЕТ', '日本語', '中文字', '한국어', 'ไทย', 'العربية',
    'עברית', 'हिन्दी', '🐱', '👍🏽', '❤️', 'e\u0301', '\u0345', 'ſ', "'ſ", "'S", "'LL", "'Re", "it's",
    "don't", "we've", "I'm", "you'd", "they'll", '&amp;', '&lt;', '&gt;', '&quot;', '&#39;', '&#x41;',
    '&#65', '&amp;amp;', '&ampx', '&notit;', '&#0;', '&#128;', '&#x110000;', '&#xD800;', '&#1;',
    '&nbsp;', '&eacute;', '&Eacute', '&zwj;', '&#12;', '&', '&#', '&#x', '&;', '<|startoftext|>',
    '<|endoftext|>', '<|STARTOFTEXT|>', '</w>', '12345', '3.14', '٣', '½', 'Ⅻ', '²', '①',
    '...', '!!!', '?!', '-', '_', '/', '\\', '"', "'", '(', ')', '[', ']', '{', '}', '#', '@', '$',
    '%', '^', '*', '+', '=', '|', '~', '`', '<', '>', '\u00a0', '\u2003', '\u3000', '\x1c', '\x1f',
    '\x85', '\u200b', '\ufeff', '\t', '\n', '\r\n', '\x0b', '\x0c', '  ', '\u2028', 'ǅ', 'ǈ', 'ꭰ',
    'Ꭰ', 'ᏸ', 'ⓐ', 'Ⓐ', 'ﬃ', 'ŉ', 'K', 'Å', 'Ω', '\ufffd', '𝔘𝔫𝔦', 'x', 'supercalifragilistic',
    'aaaaaaaaaaaaaaaa', 'lowerUPPER', 'tvmonitor', 'diningtable', 'pottedplant', 'sofa',
]


def random_text(rng):
    n = rng.randint(0, 14)
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.7:
            parts.append(rng.choice(PIECES))
        elif r < 0.85:
            parts.append(chr(rng.randint(0x20, 0x7e)))
        elif r < 0.95:
            parts.append(chr(rng.randint(0xa0, 0x2fff)))
        else:
            c = rng.randint(0x80, 0x10ffff)
            if 0xd800 <= c <= 0xdfff:
                c = 0xfffd
            parts.append(chr(c))
        parts.append(rng.choice(['', ' ', ' ', ' ', '  ', '\t']))
    s = ''.join(parts)
    return s.replace('\x00', '')


HARD = list("&#;xX0123456789abcdefABCDEF' sStTrReEvVmMlLdD<|>!.,\t\n") + [
    '\u03a3', '\u03c3', '\u0345', '\u0301', '\u00ad', '\u017f', '\u0130', '\u0131', '\u212a', '\u1e9e',
    '\u00df', '\u1f88', '\u2126', '\u01c5', '\u00a0', '\x85', '\x1c', '\u2028', '\u200b', '\u0300', '\u02b0',
    '\u1d43', '\u3000', 'A', '\u03a9', '\U0001d400', '\U0001f600', '\u0660', '\u2160']


def hard_text(rng):
    """Dense mixes of the characters where the rules are subtle: entity references (named,
    numeric, malformed), final sigma contexts, case-ignorables, IGNORECASE equivalents (U+017F),
    special tokens, Unicode whitespace variants, random code points."""
    ents = sorted(html.entities.html5)
    s = ''
    for _ in range(rng.randint(1, 25)):
        r = rng.random()
        if r < 0.15:
            s += '&' + rng.choice(ents)
        elif r < 0.2:
            s += '&#' + str(rng.choice([0, 13, 65, 128, 150, 0xd800, 0x10ffff, 0x110000, 12, 1, 0xfffe,
                                        0x3a3, 39, 38, 10 ** 30])) + rng.choice([';', ''])
        elif r < 0.25:
            s += '&#x' + format(rng.randint(0, 0x11ffff), 'x') + rng.choice([';', ''])
        elif r < 0.3:
            s += rng.choice(['<|startoftext|>', '<|endoftext|>'])
        elif r < 0.35:
            s += chr(rng.randint(1, 0x10ffff))
        else:
            s += rng.choice(HARD)
    return ''.join('\ufffd' if 0xd800 <= ord(c) <= 0xdfff else c for c in s)


def random_bytes(rng):
    """Byte strings with invalid UTF-8; the reference sees bytes.decode('utf-8', 'replace')."""
    lead = [0xc0, 0xc2, 0xe0, 0xed, 0xf0, 0xf4, 0xf5, 0x80, 0xbf, 0xa0, 0x9f, 0x90, 0x8f, 0x41, 0x20]
    return bytes(rng.choice([rng.randint(1, 255), rng.choice(lead)]) for _ in range(rng.randint(1, 12)))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    o = Oracle(sys.argv[1])
    if sys.argv[2] == 'encode':
        for t in sys.argv[3:]:
            print(' '.join(map(str, o.tokenize(t))))
    elif sys.argv[2] == 'gen':
        n, seed, out = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        rng = random.Random(seed)
        cases = []
        for i in range(n):
            if i % 10 == 9:    # invalid UTF-8, given as hex
                b = random_bytes(rng)
                t = b.decode('utf-8', 'replace')
                cases.append({'hex': b.hex(), 'bpe_ids': o.encode(t), 'context_ids': o.tokenize(t)})
                continue
            t = hard_text(rng) if i % 3 == 2 else random_text(rng)
            if i % 50 == 24:   # some long texts: truncation
                t = ' '.join(random_text(rng) for _ in range(12))
            cases.append({'text': t, 'bpe_ids': o.encode(t), 'context_ids': o.tokenize(t)})
        for t in ['a' * 1000, 'ab' * 400, 'x' * 3000 + ' tail', '\u03a3' * 50, '&amp;' * 100,
                  'hello ' * 100, "'s" * 50, '1' * 200]:   # long words, long texts
            cases.append({'text': t, 'bpe_ids': o.encode(t), 'context_ids': o.tokenize(t)})
        with open(out, 'w', encoding='utf-8') as f:
            json.dump({'source': 'scripts/clip_tokenizer_oracle.py gen %d %d' % (n, seed), 'cases': cases},
                      f, ensure_ascii=True, indent=0)
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
