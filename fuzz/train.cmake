# Trainer data target (included by fuzz/CMakeLists.txt): manifest, token shards and SFT mask files on arbitrary
# bytes. Seed corpus: fuzz/corpus/train_data.
moe_add_fuzzer(fuzz_train_data ${PROJECT_SOURCE_DIR}/fuzz/fuzz_train_data.cpp moe_train moe_tokenizer moe_io moe_core)
