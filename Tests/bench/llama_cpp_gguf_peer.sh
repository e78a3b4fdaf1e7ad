#!/bin/sh
# llama.cpp's own path from a Hugging Face checkpoint to a quantized GGUF, the peer `dsconvert-bench convert
# --llama-cpp` times beside `dsconvert export --gguf`: convert_hf_to_gguf.py --outtype bf16 (the full-size first
# pass its users run; the lite and V2 slices are bf16, so no value changes), then llama-quantize from that file.
# Usage: llama_cpp_gguf_peer.sh LLAMA_CPP_DIR CHECKPOINT OUTPUT_DIR TYPE PRE
#   LLAMA_CPP_DIR  llama.cpp built by scripts/llama-cpp.sh (llama-cpp-python's source and build/bin)
#   CHECKPOINT     with tokenizer.json and tokenizer_config.json beside the weights
#   TYPE           llama-quantize's name (Q4_K_M, Q6_K, Q8_0)
#   PRE            the pre-tokenizer name the converter would find by hashing the tokenizer's output (under
#                  transformers 5 it matches no DeepSeek entry of its table): deepseek-llm or deepseek-v3
set -eu
llama=$1 input=$2 output=$3 type=$4 pre=$5
mkdir "$output"
PRE_TOKENIZER=$pre python3 -c "import os, runpy, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/gguf-py']; import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, tokenizer: os.environ['PRE_TOKENIZER']; sys.argv = [sys.argv[1] + '/convert_hf_to_gguf.py'] + sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')" \
  "$llama/src/vendor/llama.cpp" "$input" --outtype bf16 --outfile "$output/first-pass-bf16.gguf"
"$llama/build/bin/llama-quantize" "$output/first-pass-bf16.gguf" "$output/model-$type.gguf" "$type"
rm "$output/first-pass-bf16.gguf"
