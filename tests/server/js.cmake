# Real-client tests of `moe serve` in tests/js (Node): the OpenAI Node SDK, bad input, feedback durability, a load
# test and the chat page in headless Chromium (playwright-core, /usr/bin/chromium; skipped visibly without it;
# chatpage compares screenshots with docs/screenshots/ through pngjs + pixelmatch).
# `npm ci` runs once, lazily, when a package of tests/js/package.json is missing (deps_installed.cjs).
find_program(MOE_NODE node)
find_program(MOE_NPM npm)
if(NOT MOE_NODE OR NOT MOE_NPM)
  message(STATUS "moe: node/npm not found; the server's JavaScript client tests are not registered")
  return()
endif()
set(MOE_JS_DIR ${PROJECT_SOURCE_DIR}/tests/js)
add_test(NAME server_js_npm_ci
         COMMAND sh -c "${MOE_NODE} deps_installed.cjs || ${MOE_NPM} ci --no-audit --no-fund"
         WORKING_DIRECTORY ${MOE_JS_DIR})
set_tests_properties(server_js_npm_ci PROPERTIES FIXTURES_SETUP moe_js TIMEOUT 300)
foreach(t openai structured tools anthropic responses errors feedback limits lifecycle slow crosssite load fault ops browser chatpage prefix_cache scoring speculative)
  add_test(NAME server_js_${t} COMMAND ${MOE_NODE} --test --test-reporter=tap tests/js/${t}.test.js
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(server_js_${t} PROPERTIES
    FIXTURES_REQUIRED moe_js TIMEOUT 300 SKIP_REGULAR_EXPRESSION "# SKIP"
    ENVIRONMENT "MOE_BIN=$<TARGET_FILE:moe>;MOE_TEST_OUT=${CMAKE_BINARY_DIR}/tests/js-out")
endforeach()
# The load and slow-client tests measure latencies: run them alone.
set_tests_properties(server_js_load server_js_slow server_js_fault PROPERTIES RUN_SERIAL TRUE)
# Structured output samples ~40 grammar-constrained completions and the browser test drives Chromium: 13-25 s on
# an idle 2-core machine, but one CI run (2026-12-02) saw the structured suite exceed 300 s beside fuzz_smoke's
# sanitizer build: run both alone, with room.
set_tests_properties(server_js_structured server_js_browser PROPERTIES RUN_SERIAL TRUE TIMEOUT 900)
