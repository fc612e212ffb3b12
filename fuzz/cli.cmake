# `moe chat`'s /load parser (src/cli is the program, not a library: its source is built into the target).
moe_add_fuzzer(fuzz_conversation ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_conversation.cpp moe_core nlohmann_json::nlohmann_json fmt::fmt)
target_sources(fuzz_conversation PRIVATE ${PROJECT_SOURCE_DIR}/src/cli/conversation.cpp)
target_include_directories(fuzz_conversation PRIVATE ${PROJECT_SOURCE_DIR}/src)
if(MOE_BUILD_TESTS)
  # A short bounded run as a test, on a copy of the seed corpus (libFuzzer adds to the corpus it is given).
  set(MOE_CONVERSATION_CORPUS ${CMAKE_CURRENT_BINARY_DIR}/corpus_conversation)
  add_test(NAME fuzz_conversation_smoke
           COMMAND sh -c "mkdir -p ${MOE_CONVERSATION_CORPUS} && cp ${PROJECT_SOURCE_DIR}/fuzz/corpus/conversation/* ${MOE_CONVERSATION_CORPUS}/ && exec $<TARGET_FILE:fuzz_conversation> -max_total_time=10 -max_len=4096 ${MOE_CONVERSATION_CORPUS}")
endif()
# The launcher's --rendezvous and CUDA_VISIBLE_DEVICES parsers (src/cli/launcher.cpp, built into the target).
moe_add_fuzzer(fuzz_launch_args ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_launch_args.cpp moe_dist moe_core CLI11::CLI11 fmt::fmt)
target_sources(fuzz_launch_args PRIVATE ${PROJECT_SOURCE_DIR}/src/cli/launcher.cpp)
target_include_directories(fuzz_launch_args PRIVATE ${PROJECT_SOURCE_DIR}/src)
