#!/usr/bin/env python3
"""Test data for the tiktoken tokenizer (Kimi-K2 style), in tests/data/kimi-tiktoken/:
  tiktoken.model          a vocabulary in tiktoken's format made from DeepSeek-V3's byte-level BPE
                          (models/deepseek-v3-tokenizer): the 256 bytes get ranks 0..255, then each of the first
                          MERGES merges gets the next rank for the token it makes (ranks = merge order)
  tokenizer_config.json   Kimi-style: added_tokens_decoder after the ranks, [BOS] / [EOS]
  reference.json          ~200 strings and their ids from an independent Python implementation of tiktoken's
                          encoder below (special tokens split out, Kimi's pat_str with the `regex` module in V1 mode,
                          which has its [A&&[^B]] class intersections, then rank-ordered byte-pair merging)
Usage: python3 scripts/make_tiktoken_test_vocab.py   (from the repository root; needs the `regex` module)
"""
import base64
import json
import random

import regex

OUT = "tests/data/kimi-tiktoken/"
MERGES = 12000

# Kimi-K2's pre-tokenizer, as written in its tokenization_kimi.py.
PAT_STR = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

SPECIAL = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>",
           "<|end_header_id|>", "[EOT]", "<|im_system|>", "<|im_middle|>"]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def make_vocab():
    dec = {c: b for b, c in bytes_to_unicode().items()}
    tok = json.load(open("models/deepseek-v3-tokenizer/tokenizer.json", encoding="utf-8"))
    ranks = {bytes([b]): b for b in range(256)}
    for m in tok["model"]["merges"][:MERGES]:
        left, right = m if isinstance(m, list) else m.split(" ", 1)
        token = bytes(dec[c] for c in left + right)
        if token not in ranks:
            ranks[token] = len(ranks)
    return ranks


def byte_pair_merge(piece, ranks):
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return [ranks[p] for p in parts]


def encode(text, ranks, special, pat):
    ids = []
    split = regex.compile("(" + "|".join(regex.escape(s) for s in special) + ")")
    for i, segment in enumerate(split.split(text)):
        if i % 2 == 1:
            ids.append(special[segment])
            continue
        for m in pat.findall(segment):
            piece = m.encode("utf-8")
            ids += [ranks[piece]] if piece in ranks else byte_pair_merge(piece, ranks)
    return ids


def strings():
    fixed = [
        "Hello world", "hello, World! It's I'M we'LL you'd they've she's", "  leading and trailing  ",
        "tabs\tand\nnewlines\r\nand\r\rreturns", "\n\n\n", "   \n  \n", "a    b     c", "x" * 40,
        "1234567890", "3.14159 2,718 1e-10 -42 +7", "١٢٣ ४५६ 𝟙𝟚𝟛 ½ Ⅻ", "CamelCaseWord HTTPServer iPhone XMLHttpRequest",
        "ALL CAPS SHOUT", "数学是科学的皇后", "混合English和中文text", "日本語のひらがなとカタカナ", "한국어 텍스트",
        "Ελληνικά κείμενο", "Русский ТЕКСТ", "עברית", "العربية", "ǅungla ǈubav ǋ", "ʰʲ modifier ˈletters",
        "combining: é (e\u0301) n\u0303 a\u0308\u0301", "emoji 😀👍🏽👨‍👩‍👧 🇫🇷", "symbols ©®™ §¶ ∑∫√ ← → ⇒",
        "code: def f(x):\n    return x**2  # square\n", "if (a && b || !c) { x += 1; }", "path/to/file.txt C:\\Windows",
        "https://example.com/a?b=c&d=e#f", "email@example.org", "<html><body>hi</body></html>",
        "[BOS]Hello[EOS]", "<|im_user|>user<|im_middle|>Hi there<|im_end|><|im_assistant|>assistant<|im_middle|>",
        "text[EOT]more", "no special [BOS without end", "<|im_end", "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE",
        "don't won't can't", "\u00a0non\u00a0breaking\u2003em\u2003space", "zero\u200bwidth\u200djoiner",
        "", " ", "a", "\t", "。，、；：？！", "「引用」『二重』", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ", "mixed123numbers456and789",
        "1234 12345 123456 1234567", "....!!!???", "--- *** ___ ===", "a\u0300\u0301\u0302\u0303b",
    ]
    rng = random.Random(20261202)
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n\r  ",
             ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`", "数学科学中文字", "éèêëàâäôöûüç", "αβγδεζηθ", "😀🚀✨",
             "\u0301\u0308", "ǅǈ", "ʰʲ"]
    out = list(fixed)
    while len(out) < 200:
        n = rng.randint(1, 40)
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(n))
        if rng.random() < 0.15:
            s = s[:n // 2] + rng.choice(SPECIAL) + s[n // 2:]
        out.append(s)
    return out


def main():
    ranks = make_vocab()
    with open(OUT + "tiktoken.model", "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(token).decode() + " " + str(rank) + "\n")
    n = len(ranks)
    special = {s: n + i for i, s in enumerate(SPECIAL)}
    config = {
        "added_tokens_decoder": {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for s, i in special.items()},
        "bos_token": "[BOS]", "eos_token": "[EOS]", "tokenizer_class": "TikTokenTokenizer",
        "model_max_length": 131072,
    }
    json.dump(config, open(OUT + "tokenizer_config.json", "w"), indent=2)
    # every token tiktoken would accept as special, reserved names included, as tokenization_kimi.py builds them
    all_special = {f"<|reserved_token_{i}|>": i for i in range(n, n + 258)}
    for s, i in special.items():
        del all_special[f"<|reserved_token_{i}|>"]
        all_special[s] = i
    pat = regex.compile(PAT_STR, flags=regex.V1)
    cases = [{"text": s, "ids": encode(s, ranks, all_special, pat)} for s in strings()]
    json.dump({"generator": "scripts/make_tiktoken_test_vocab.py", "ranks": n, "cases": cases},
              open(OUT + "reference.json", "w", encoding="utf-8"), ensure_ascii=False, indent=0)
    print(n, "ranks,", len(cases), "cases")


if __name__ == "__main__":
    main()
