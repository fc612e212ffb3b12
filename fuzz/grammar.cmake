# Grammar fuzz target (included by fuzz/CMakeLists.txt): the JSON Schema compiler and the byte matcher.
# Seed corpus: fuzz/corpus/json_schema (a schema on the first line, text to match after it).
moe_add_fuzzer(fuzz_json_schema ${PROJECT_SOURCE_DIR}/fuzz/fuzz_json_schema.cpp moe_grammar)
