# Server fuzz target (included by fuzz/CMakeLists.txt): request JSON parsing. Seed corpus: fuzz/corpus/chat_request.
moe_add_fuzzer(fuzz_chat_request ${PROJECT_SOURCE_DIR}/fuzz/fuzz_chat_request.cpp moe_server_api)
if(MOE_BUILD_TESTS)
  # A short bounded run as a test, on a copy of the seed corpus (libFuzzer adds to the corpus it is given).
  set(MOE_CHAT_CORPUS ${CMAKE_CURRENT_BINARY_DIR}/corpus_chat_request)
  add_test(NAME fuzz_chat_request_smoke
           COMMAND sh -c "mkdir -p ${MOE_CHAT_CORPUS} && cp ${PROJECT_SOURCE_DIR}/fuzz/corpus/chat_request/* ${MOE_CHAT_CORPUS}/ && exec $<TARGET_FILE:fuzz_chat_request> -max_total_time=20 -max_len=4096 ${MOE_CHAT_CORPUS}")
endif()
# The HTTP request path end to end (bytes on a connection to the real Server on the tiny model). Seed corpus:
# fuzz/corpus/http_request.
moe_add_fuzzer(fuzz_http_request ${PROJECT_SOURCE_DIR}/fuzz/fuzz_http_request.cpp moe_server)
# The tool-call markup parser. Seed corpus: fuzz/corpus/tool_calls.
moe_add_fuzzer(fuzz_tool_calls ${PROJECT_SOURCE_DIR}/fuzz/fuzz_tool_calls.cpp moe_server_api)
if(MOE_BUILD_TESTS)
  set(MOE_TOOL_CORPUS ${CMAKE_CURRENT_BINARY_DIR}/corpus_tool_calls)
  add_test(NAME fuzz_tool_calls_smoke
           COMMAND sh -c "mkdir -p ${MOE_TOOL_CORPUS} && cp ${PROJECT_SOURCE_DIR}/fuzz/corpus/tool_calls/* ${MOE_TOOL_CORPUS}/ && exec $<TARGET_FILE:fuzz_tool_calls> -max_total_time=20 -max_len=4096 ${MOE_TOOL_CORPUS}")
endif()
