#!/usr/bin/env python3
"""Writes the tiny tokenizer.json fixtures of Fixtures/tokenizers/ and expected.json, the ids and
decoded text the `tokenizers` library (pinned in scripts/setup.sh) gives for each fixture and text.
Run by hand (`python3 Fixtures/tokenizers/generate.py`); the Swift tests read the committed output and
Tests/crosscheck/crosscheck.py checks it against the live library again."""
import collections
import json
import os

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


B2U = bytes_to_unicode()
CORPUS = ("the quick brown fox jumps over the lazy dog; the theory then thereafter. in the end, "
          "tokens and tokenizers merge the most frequent pairs 123 456 7890 中文 中文 日本 日本")


def train(merge_count):
    """A plain BPE over CORPUS's byte-level words: the most frequent pair first, ties by pair order."""
    words = collections.Counter()
    for word in CORPUS.split(" "):
        words[tuple(B2U[b] for b in (" " + word).encode())] += 1
    vocab = {c: i for i, c in enumerate(sorted(set(B2U.values())))}
    merges = []
    for _ in range(merge_count):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(f"{best[0]} {best[1]}")
        vocab.setdefault(best[0] + best[1], len(vocab))
        merged = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = count
        words = merged
    return vocab, merges


VOCAB, MERGES = train(80)
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def split(pattern, behavior="Isolated", invert=False, kind="Regex"):
    return {"type": "Split", "pattern": {kind: pattern}, "behavior": behavior, "invert": invert}


def added(content, id_, special=True, lstrip=False, rstrip=False, single_word=False, normalized=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def tokenizer(pre, normalizer=None, added_tokens=(), ignore_merges=False, vocab_extra=None):
    """`vocab_extra` given: the vocabulary is VOCAB plus it, and added tokens are not put into it."""
    vocab = dict(VOCAB)
    if vocab_extra is not None:
        vocab.update(vocab_extra)
    for token in added_tokens if vocab_extra is None else ():
        vocab.setdefault(token["content"], token["id"])
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added_tokens),
            "normalizer": normalizer, "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                      "vocab": vocab, "merges": MERGES}}


N = len(VOCAB)
V3_PATTERN = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
              " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
FIXTURES = {
    "split-isolated": tokenizer([split("\\s+"), BYTE_LEVEL]),
    "split-removed": tokenizer([split("\\s+", "Removed"), BYTE_LEVEL]),
    "split-merged-previous": tokenizer([split("\\p{P}", "MergedWithPrevious"), BYTE_LEVEL]),
    "split-merged-next": tokenizer([split("\\p{P}", "MergedWithNext"), BYTE_LEVEL]),
    "split-contiguous": tokenizer([split("[a-z]", "Contiguous"), BYTE_LEVEL]),
    "split-invert": tokenizer([split("\\p{L}+", "Removed", invert=True), BYTE_LEVEL]),
    "split-string": tokenizer([split("th", "Isolated", kind="String"), BYTE_LEVEL]),
    "split-anchors": tokenizer([split("[\r\n]"), split("\\s+$"), split("^ ?[a-z]|x{2,}?y"), BYTE_LEVEL]),
    "split-empty-matches": tokenizer([split("x*"), BYTE_LEVEL]),
    "digits-individual": tokenizer([{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]),
    "digits-contiguous": tokenizer([{"type": "Digits", "individual_digits": False}, BYTE_LEVEL]),
    "byte-level-regex": tokenizer([{"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]),
    "v3-style": tokenizer([split("\\p{N}{1,3}"), split("[一-龥぀-ゟ゠-ヿ]+"), split(V3_PATTERN), BYTE_LEVEL]),
    "v2-style": tokenizer([split("[\r\n]"), split("\\s?[A-Za-zµÀ-ÖØ-öø-ƺ]+"), split("\\s?[!-/:-~！-／：-～‘-‟　-。]+"),
                           split("\\s+$"), split("[一-龥ࠀ-一가-퟿]+"), {"type": "Digits", "individual_digits": True}, BYTE_LEVEL]),
    "added-tokens": tokenizer([split(V3_PATTERN), BYTE_LEVEL], added_tokens=[
        added("<s>", N), added("<mask>", N + 1, lstrip=True), added("[SEP]", N + 2, rstrip=True),
        added("word", N + 3, special=False, single_word=True, normalized=True), added("<s><s>", N + 4, special=False),
        added("ﬁ", N + 5, special=False, normalized=True)]),
    # Declared ids the library does not use (it assigns added-token ids itself, warning): <mask> is in
    # the vocabulary at N (declared 7), <s> and [SEP] are new (N+1, N+2 whatever they declare), <mask>
    # is listed again without lstrip (the last entry's flags win), the empty token is dropped.
    "added-ids-library": tokenizer([split(V3_PATTERN), BYTE_LEVEL], vocab_extra={"<mask>": N}, added_tokens=[
        added("<mask>", 7, lstrip=True), added("<s>", N + 5), added("[SEP]", N + 1, rstrip=True), added("", N + 8),
        added("<mask>", 7), added("word", N + 3, special=False, single_word=True, normalized=True)]),
    "nfkc": tokenizer([split("\\s+"), BYTE_LEVEL], normalizer={"type": "Sequence", "normalizers": [{"type": "NFKC"}]},
                      added_tokens=[added("fi", N, special=False, normalized=True), added("①", N + 1, normalized=False)]),
    "nfc": tokenizer([split("\\s+"), BYTE_LEVEL], normalizer={"type": "NFC"}),
    "ignore-merges": tokenizer([split("\\s+"), BYTE_LEVEL], ignore_merges=True),
}
BAD = {
    "bad-model": {"model": {"type": "WordPiece", "vocab": {}}},
    "bad-pre-tokenizer": {"pre_tokenizer": {"type": "Whitespace"}},
    "bad-regex": {"pre_tokenizer": split("(?<=a)b")},
    "bad-merge": {"model": dict(tokenizer([])["model"], merges=MERGES + ["Ġ zz"])},
    # The vocabulary's last token moved from N-1 to N: the first new added token gets id N (the entry
    # count), which that token has; the library then no longer finds the added token.
    "bad-added-id": {"model": dict(tokenizer([])["model"], vocab={t: (N if i == N - 1 else i) for t, i in VOCAB.items()}),
                     "added_tokens": [added("<s>", N + 1)]},
}
TEXTS = ["Hello world", "the theory, then thereafter!", "  leading and trailing  ", "a\tb\r\nc\n\n d \n", "x123y4567 89",
         "¡Hola! ¿Qué tal? «ok»", "中文 日本語 カタカナ", "e\u0301 é ﬁ ① ｆｕｌｌ", "<mask> a<mask>b <mask>  x",
         "[SEP]word [SEP] word[SEP]  wordy sword word", "<s><s><s> <s>", "don't we'll xxxy", "", "   ", "👩‍👩‍👧 👍🏽"]


def main():
    expected = {}
    for name, content in FIXTURES.items():
        path = os.path.join(HERE, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, separators=(",", ":"))
        tok = Tokenizer.from_file(path)
        expected[name] = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in TEXTS]
        for case in expected[name]:
            case["decoded"] = tok.decode(case["ids"], skip_special_tokens=False)
    for name, change in BAD.items():
        content = dict(FIXTURES["split-isolated"], **change)
        with open(os.path.join(HERE, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
