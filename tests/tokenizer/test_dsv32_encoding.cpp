// DeepSeek-V3.2's native prompt encoder against DeepSeek's own Python encoder (tests/data/dsv32_encoder, made by
// scripts/gen_dsv32_encoder_fixture.py): every prompt byte for byte; Python's json.dumps formatting; and the
// inputs the encoder refuses, each with an error naming the message and field.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "tokenizer/dsv32_encoding.h"

namespace moe::dsv32 {
namespace {

using ojson = nlohmann::ordered_json;

std::vector<ojson> fixture_cases() {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator("tests/data/dsv32_encoder"))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<ojson> cases;
  for (const auto& f : files) cases.push_back(ojson::parse(std::ifstream(f)));
  return cases;
}

TEST(Dsv32Encoding, MatchesDeepSeekEncoderByteForByte) {
  const auto cases = fixture_cases();
  ASSERT_EQ(cases.size(), 16u);
  for (const ojson& c : cases) {
    const std::string got = chat_prompt(c.at("messages"), c.at("tools"), c.at("thinking").get<bool>());
    const std::string want = c.at("prompt").get<std::string>();
    EXPECT_EQ(got, want) << c.at("name");
    if (got != want) {  // point at the first difference: the prompts are long
      const size_t at = std::mismatch(got.begin(), got.end(), want.begin(), want.end()).first - got.begin();
      ADD_FAILURE() << c.at("name") << ": first difference at byte " << at << ": got '" << got.substr(at, 60)
                    << "' want '" << want.substr(at, 60) << "'";
    }
  }
}

TEST(Dsv32Encoding, PythonJsonFormatting) {
  // Expected output printed by Python 3.11: json.dumps(json.loads(same text), ensure_ascii=False).
  const ojson v = ojson::parse(R"({"z": [1, 2.5, -0.0, 1e300, 1E-9, "\u00e9\u0007\n\"\\/"], "a": {}, "m": [],
                                   "n": null, "t": true, "big": 12345678901234567})");
  EXPECT_EQ(python_json(v),
            "{\"z\": [1, 2.5, -0.0, 1e+300, 1e-09, \"\u00e9\\u0007\\n\\\"\\\\/\"], \"a\": {}, \"m\": [], \"n\": null, "
            "\"t\": true, \"big\": 12345678901234567}");
}

std::string error_of(const ojson& messages, bool thinking = false) {
  try {
    chat_prompt(messages, nullptr, thinking);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

ojson call(const ojson& function) { return {{"type", "function"}, {"function", function}}; }

TEST(Dsv32Encoding, BadInputIsAClearError) {
  const ojson user = {{"role", "user"}, {"content", "hi"}};
  EXPECT_NE(error_of({user, {{"role", "robot"}, {"content", "x"}}}).find("messages[1]: unknown role 'robot'"),
            std::string::npos);
  EXPECT_NE(error_of({{{"content", "x"}}}).find("messages[0] has no string 'role'"), std::string::npos);
  const auto with_call = [&](const ojson& fn) {
    return ojson{user, {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call(fn)}}}};
  };
  EXPECT_NE(error_of(with_call({{"arguments", "{}"}})).find("messages[1].tool_calls[0] has no function name"),
            std::string::npos);
  EXPECT_NE(error_of(with_call({{"name", "f"}, {"arguments", "{\"a\": "}}))
                .find("messages[1].tool_calls[0].function.arguments is not valid JSON"),
            std::string::npos);
  EXPECT_NE(error_of(with_call({{"name", "f"}, {"arguments", "[1, 2]"}}))
                .find("messages[1].tool_calls[0].function.arguments must be a JSON object, not array"),
            std::string::npos);
  EXPECT_NE(error_of(with_call({{"name", "f"}, {"arguments", {{"a", 1}}}}))
                .find("arguments must be a string of JSON"),
            std::string::npos);
  EXPECT_NE(error_of({user, {{"role", "tool"}, {"content", "out"}}})
                .find("messages[1] (tool): a tool result must follow an assistant message with tool_calls"),
            std::string::npos);
  ojson two_results = with_call({{"name", "f"}, {"arguments", "{}"}});
  two_results.push_back({{"role", "tool"}, {"content", "1"}});
  two_results.push_back({{"role", "tool"}, {"content", "2"}});
  EXPECT_NE(error_of(two_results).find("messages[3] (tool): tool result 2 of an assistant turn that made 1 tool call"),
            std::string::npos);
  EXPECT_NE(error_of({user, {{"role", "assistant"}, {"content", "no reasoning"}}}, true)
                .find("messages[1] (assistant): in thinking mode an assistant turn after the last user turn needs"),
            std::string::npos);
  EXPECT_NE(error_of({{{"role", "user"}, {"content", nullptr}}}).find("messages[0] (user): 'content' must be a string"),
            std::string::npos);
  EXPECT_NE(error_of({{{"role", "developer"}, {"content", "d"}}, user}, true).find("messages[0] (developer)"),
            std::string::npos);
  EXPECT_NE(error_of(ojson::array()).find("non-empty"), std::string::npos);
}

}  // namespace
}  // namespace moe::dsv32
