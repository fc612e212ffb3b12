# Expert-parallel serving's step message (included by fuzz/CMakeLists.txt): what rank 0 broadcasts to the other
# ranks before each step. Seed corpus: fuzz/corpus/step_message.
moe_add_fuzzer(fuzz_step_message ${PROJECT_SOURCE_DIR}/fuzz/fuzz_step_message.cpp moe_engine moe_model moe_core)
