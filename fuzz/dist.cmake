# The communicator layer's network input (included by fuzz/CMakeLists.txt): the TCP rendezvous's hello and
# header. Seed corpus: fuzz/corpus/rendezvous.
moe_add_fuzzer(fuzz_rendezvous ${PROJECT_SOURCE_DIR}/fuzz/fuzz_rendezvous.cpp moe_dist moe_core)
