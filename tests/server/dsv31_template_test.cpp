// DeepSeek-V3.1's chat template (tests/data/dsv31, the published template) through the engine: renderings against
// Jinja2 (scripts/gen_dsv31_renderings.py), the thinking switch under both of its names (thinking,
// enable_thinking), the tool-call format detected from the template, and calls the template writes into history
// parsed back by the shared tool-call parser (fed a byte at a time, as a stream may split them).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "server/reasoning.h"
#include "server/tool_call_parser.h"
#include "server/tools.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::server {
namespace {

using nlohmann::json;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const Tokenizer& v31() {
  static const Tokenizer t = Tokenizer::from_json(slurp("models/deepseek-v3-tokenizer/tokenizer.json"),
                                                  slurp("tests/data/dsv31/tokenizer_config.json"));
  return t;
}

const json& cases() {
  static const json c = json::parse(slurp("tests/data/dsv31/renderings.json")).at("cases");
  return c;
}

const json& find_case(const std::string& name) {
  for (const json& c : cases())
    if (c.at("name") == name) return c;
  throw std::runtime_error("no case " + name);
}

std::string render(const json& c, const json& context) {
  return v31().chat_template().render(c.at("messages"), c.at("add_generation_prompt").get<bool>(),
                                      thinking_kwargs(context));
}

TEST(DeepSeekV31Template, RenderingsMatchJinja2) {
  ASSERT_EQ(cases().size(), 7u);
  for (const json& c : cases()) EXPECT_EQ(render(c, c.at("context")), c.at("text").get<std::string>()) << c.at("name");
}

TEST(DeepSeekV31Template, EnableThinkingIsAnAliasOfThinking) {
  const json& on = find_case("user_thinking_on");
  const json& off = find_case("user_thinking_off");
  EXPECT_EQ(render(on, {{"enable_thinking", true}}), on.at("text").get<std::string>());
  EXPECT_EQ(render(on, {{"enable_thinking", false}}), off.at("text").get<std::string>());
  EXPECT_EQ(render(on, {{"thinking", false}, {"enable_thinking", true}}), on.at("text").get<std::string>());
  EXPECT_EQ(render(on, json::object()), off.at("text").get<std::string>());  // V3.1 defaults to non-thinking

  EXPECT_EQ(thinking_kwargs({{"enable_thinking", 1}, {"x", "y"}}),
            json({{"thinking", true}, {"enable_thinking", true}, {"x", "y"}}));
  EXPECT_EQ(thinking_kwargs({{"x", "y"}}), json({{"x", "y"}}));  // no switch given: nothing is added
  EXPECT_TRUE(thinking_requested(thinking_kwargs({{"enable_thinking", true}})));
  EXPECT_FALSE(thinking_requested(json::object()));
}

TEST(DeepSeekV31Template, FormatAndReasoningAreDetectedFromTheTemplate) {
  const std::string& src = v31().chat_template().source();
  EXPECT_EQ(tool_call_format(src), ToolCallFormat::v31);
  EXPECT_TRUE(template_supports_reasoning(src));
  EXPECT_FALSE(template_renders_tools(src));  // V3.1 describes tools in the system prompt (tools_system_prompt)
  EXPECT_TRUE(prompt_opens_reasoning(find_case("user_thinking_on").at("text").get<std::string>()));
  EXPECT_FALSE(prompt_opens_reasoning(find_case("user_thinking_off").at("text").get<std::string>()));
}

TEST(DeepSeekV31Template, CallsInHistoryParseBackToTheSameCalls) {
  for (const char* name : {"tool_history", "tool_call_with_content_pending_output"}) {
    const json& c = find_case(name);
    const std::string text = c.at("text");
    json expected, said;  // the calling assistant message's tool_calls and content
    for (const json& m : c.at("messages"))
      if (m.contains("tool_calls")) expected = m.at("tool_calls"), said = m.at("content");
    ASSERT_TRUE(expected.is_array()) << name;
    // The assistant turn: from the end of the user turn's </think> to the end of the call list.
    const size_t from = text.find("</think>", text.find("<｜Assistant｜>")) + std::string("</think>").size();
    const size_t to = text.find(kToolCallsEnd) + kToolCallsEnd.size();
    ASSERT_LT(from, to) << name;
    ToolCallParser parser(ToolCallFormat::v31, "call_");
    std::string content;
    std::vector<ToolCall> calls;
    auto take = [&](const ToolCallParser::Out& o) {
      content += o.content;
      for (const auto& d : o.calls) {
        if (!d.id.empty()) calls.push_back({d.id, d.name, ""});
        calls.at(size_t(d.index)).arguments += d.arguments;
      }
    };
    for (size_t i = from; i < to; ++i) take(parser.feed(std::string_view(text).substr(i, 1)));
    take(parser.flush());
    EXPECT_EQ(content, said.is_null() ? "" : said.get<std::string>()) << name;
    ASSERT_EQ(calls.size(), expected.size()) << name;
    for (size_t i = 0; i < calls.size(); ++i) {
      EXPECT_EQ(calls[i].name, expected[i].at("function").at("name").get<std::string>()) << name;
      EXPECT_EQ(calls[i].arguments, expected[i].at("function").at("arguments").get<std::string>()) << name;
      // What the engine writes for a call in V3.1's format is what the template writes.
      EXPECT_NE(text.find(render_tool_call(calls[i].name, calls[i].arguments, ToolCallFormat::v31)), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace moe::server
