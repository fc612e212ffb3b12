# Trainer data target (included by fuzz/CMakeLists.txt): manifest, token shards and SFT mask files on arbitrary
# bytes. Seed corpus: fuzz/corpus/train_data.
moe_add_fuzzer(fuzz_train_data ${PROJECT_SOURCE_DIR}/fuzz/fuzz_train_data.cpp moe_train moe_tokenizer moe_io moe_core)
# tokenize-corpus's JSONL input with fill-in-the-middle (needs models/moe-tiny's tokenizer: run from the repository
# root). Seed corpus: fuzz/corpus/corpus_jsonl.
moe_add_fuzzer(fuzz_corpus_jsonl ${PROJECT_SOURCE_DIR}/fuzz/fuzz_corpus_jsonl.cpp moe_train moe_tokenizer moe_io moe_core)
