# Tokenizer fuzz target (included by fuzz/CMakeLists.txt).
moe_add_fuzzer(fuzz_tokenizer_encode ${PROJECT_SOURCE_DIR}/fuzz/fuzz_tokenizer_encode.cpp moe_tokenizer moe_core)
target_compile_definitions(fuzz_tokenizer_encode PRIVATE MOE_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
