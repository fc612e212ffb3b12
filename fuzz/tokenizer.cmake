# Tokenizer fuzz target (included by fuzz/CMakeLists.txt).
moe_add_fuzzer(fuzz_tokenizer_encode ${PROJECT_SOURCE_DIR}/fuzz/fuzz_tokenizer_encode.cpp moe_tokenizer moe_core)
target_compile_definitions(fuzz_tokenizer_encode PRIVATE MOE_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
# Chat template target: parse and render arbitrary templates. Seed corpus: fuzz/corpus/chat_template.
moe_add_fuzzer(fuzz_chat_template ${PROJECT_SOURCE_DIR}/fuzz/fuzz_chat_template.cpp moe_tokenizer moe_core)
# tokenizer.json target: load arbitrary files, then encode and decode. Seed corpus: fuzz/corpus/tokenizer_json.
moe_add_fuzzer(fuzz_tokenizer_json ${PROJECT_SOURCE_DIR}/fuzz/fuzz_tokenizer_json.cpp moe_tokenizer moe_core)
# tiktoken.model target (Kimi-K2's vocabulary format): load arbitrary files, then encode and decode. Seed corpus:
# fuzz/corpus/tiktoken_model.
moe_add_fuzzer(fuzz_tiktoken_model ${PROJECT_SOURCE_DIR}/fuzz/fuzz_tiktoken_model.cpp moe_tokenizer moe_core)
