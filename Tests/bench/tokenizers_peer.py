#!/usr/bin/env python3
"""The tokenizers peer of `dsconvert-bench tokenize`: times RUNS + 1 loads of the file (Tokenizer.from_file)
and RUNS encodes of TEXT, and writes {"load_seconds": [...], "seconds": [...], "ids": [...]} to OUT so
the bench can check the ids. Thread count comes from RAYON_NUM_THREADS, which the bench sets."""
import json
import sys
import time

from tokenizers import Tokenizer

tokenizer_path, text_path, runs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
load_seconds = []
for _ in range(runs + 1):  # the first in a fresh process, then as many as the encodes
    start = time.perf_counter()
    tokenizer = Tokenizer.from_file(tokenizer_path)
    load_seconds.append(time.perf_counter() - start)
with open(text_path, encoding="utf-8", newline="") as f:
    text = f.read()
seconds, ids = [], None
for _ in range(runs):
    start = time.perf_counter()
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    seconds.append(time.perf_counter() - start)
with open(out, "w") as f:
    json.dump({"load_seconds": load_seconds, "seconds": seconds, "ids": ids}, f)
