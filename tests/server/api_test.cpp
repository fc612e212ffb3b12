// Request parsing limits (src/server/api.cpp) that guard the rest of the server: JSON nesting is bounded on
// the raw body, before parsing, so no deep document is built, copied or converted into template values.
#include "server/api.h"

#include <gtest/gtest.h>

#include <functional>

#include "core/json_depth.h"

namespace moe::server {
namespace {

std::string deep(size_t levels) { return std::string(levels, '[') + std::string(levels, ']'); }

void expect_nesting_error(const std::function<void()>& parse, const std::string& what) {
  try {
    parse();
    ADD_FAILURE() << what << ": accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400) << what;
    EXPECT_NE(std::string(e.what()).find("nesting deeper than 128 levels"), std::string::npos)
        << what << e.what();
  }
}

TEST(Api, DeeplyNestedBodiesAreRefusedBeforeParsing) {
  const std::string hi = R"([{"role": "user", "content": "hi"}])";
  // The body's own object adds levels: a value 128 deep is already past the limit.
  for (size_t levels : {size_t(kMaxJsonDepth), size_t(15000), size_t(100000)}) {
    const std::string d = deep(levels);
    const std::string bodies[] = {
        R"({"messages": )" + hi + R"(, "tools": )" + d + "}",
        R"({"messages": )" + hi + R"(, "chat_template_kwargs": {"x": )" + d + "}}",
        R"({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": )"
        R"({"name": "f", "arguments": "{}"}, "x": )" +
            d + "}]}]}",
    };
    for (const auto& body : bodies) {
      expect_nesting_error([&] { parse_chat_request(body); }, "chat " + std::to_string(levels));
    }
    expect_nesting_error([&] { parse_completion_request(R"({"prompt": "x", "extra": )" + d + "}"); },
                         "completion");
    expect_nesting_error(
        [&] { parse_feedback_request(R"({"answer": "a", "rating": 1, "conversation": )" + d + "}"); },
        "feedback");
  }
  // Within the limit: template arguments nested 100 levels deep are fine.
  const std::string ok = R"({"messages": )" + hi + R"(, "chat_template_kwargs": {"x": )" + deep(100) + "}}";
  EXPECT_EQ(parse_chat_request(ok).chat_template_kwargs["x"].size(), 1u);
  // Brackets inside strings do not count.
  EXPECT_NO_THROW(parse_chat_request(R"({"messages": [{"role": "user", "content": ")" +
                                     std::string(1000, '[') + R"("}]})"));
}

}  // namespace
}  // namespace moe::server
