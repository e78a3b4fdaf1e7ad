#!/usr/bin/env bash
# The export --gguf benchmark: times, in one run on one checkpoint, `cp -r && sync` of it, dsconvert's
# one-pass `export --gguf --type TYPE` and llama.cpp's own path to the same file (convert_hf_to_gguf.py
# --outtype f32, then llama-quantize; built by scripts/llama-cpp.sh), printing wall seconds, the ratio to the
# copy and peak RSS of each (GNU time). Usage:
#   scripts/bench-gguf.sh CHECKPOINT TOKENIZER_DIR [TYPE (q4_k_m)] [PARENT_DIR for scratch (next to the checkpoint)]
# TOKENIZER_DIR holds tokenizer.json and tokenizer_config.json (dsconvert reads them with --tokenizer; the
# converter needs them in the checkpoint, so the peer converts a copy with them added).
set -euo pipefail
cd "$(dirname "$0")/.."
input=$(realpath "$1"); tokenizer=$(realpath "$2"); type=${3:-q4_k_m}; parent=${4:-$(dirname "$input")}
case $type in q4_k_m) qtype=Q4_K_M ;; q6_k) qtype=Q6_K ;; q8_0) qtype=Q8_0 ;; *) echo "type: q4_k_m, q6_k or q8_0" >&2; exit 64 ;; esac
llama=$(scripts/llama-cpp.sh)
swift build -c release --product dsconvert >/dev/null
# A fresh directory of its own under PARENT (its outputs are several GB): only that is removed at the end.
work=$(mktemp -d "$parent/bench-gguf.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Read the input once so every job starts from the page cache.
cat "$input"/*.safetensors > /dev/null
measure() {  # NAME COMMAND...: prints "NAME seconds rss_kib", or nothing when the command fails (its last line on stderr)
  local name=$1; shift
  if /usr/bin/time -f "%e %M" -o "$work/time" "$@" > "$work/$name.log" 2>&1; then
    echo "$name $(tail -1 "$work/time")"
  else
    echo "$name: failed: $(grep -v '^Command exited' "$work/$name.log" | tail -1)" >&2
  fi
}
results=()
results+=("$(measure "cp -r && sync" sh -c "cp -r '$input' '$work/copy' && sync")")
rm -rf "$work/copy"
results+=("$(measure "dsconvert export --gguf --type $type" .build/release/dsconvert export --gguf --type "$type" --input "$input" --tokenizer "$tokenizer" --output "$work/dsconvert")")
rm -rf "$work/dsconvert"
cp -r "$input" "$work/with-tokenizer" && cp "$tokenizer"/tokenizer.json "$tokenizer"/tokenizer_config.json "$work/with-tokenizer/"
converter="import runpy, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/gguf-py']; import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'deepseek-llm'; sys.argv = [sys.argv[1] + '/convert_hf_to_gguf.py'] + sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
results+=("$(measure "convert_hf_to_gguf.py --outtype f32" python3 -c "$converter" "$llama/src/vendor/llama.cpp" "$work/with-tokenizer" --outtype f32 --outfile "$work/f32.gguf")")
quantized=$(measure "llama-quantize $qtype" "$llama/build/bin/llama-quantize" "$work/f32.gguf" "$work/peer.gguf" "$qtype")
[ -n "$quantized" ] && results+=("$quantized")
copy=$(echo "${results[0]}" | awk '{print $(NF-1)}')
printf '%-42s %9s %9s %12s\n' job seconds "x copy" "peak RSS MiB"
for r in "${results[@]}"; do
  name=${r% * *}; rest=${r#"$name "}; s=${rest% *}; kib=${rest#* }
  printf '%-42s %9.2f %9.2f %12d\n' "$name" "$s" "$(echo "$s / $copy" | bc -l)" "$((kib / 1024))"
done
peer=$(printf '%s\n' "${results[@]:2}" | awk '{s += $(NF-1)} END {print s}')
ours=$(echo "${results[1]}" | awk '{print $(NF-1)}')
what="converter + llama-quantize"
[ -z "$quantized" ] && what="the converter alone (llama-quantize refused the model), a lower bound of llama.cpp's path"
printf 'llama.cpp path, %s: %.2f s; dsconvert is %.2fx faster\n' "$what" "$peer" "$(echo "$peer / $ours" | bc -l)"
