// DeepSeek-V3.2's DSML tool calls in model output: the streaming parser (ToolCallFormat::dsml) against DeepSeek's own
// parser (tests/data/dsv32_dsml/parse_cases.json, from encoding_dsv32.py's parse_message_from_completion_text via
// scripts/gen_dsv32_encoder_fixture.py), fed whole, a byte at a time and in uneven pieces; calls written by the
// native encoder parsed back to the same arguments; and malformed or cut-short markup.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "server/tool_call_parser.h"
#include "tokenizer/dsv32_encoding.h"

namespace moe::server {
namespace {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

const std::string kEos = "<｜end▁of▁sentence｜>";

struct Parsed {
  std::string content;
  std::vector<ToolCall> calls;
};

// Feeds `text` in pieces of the given sizes (cycled; 0 = whole) and assembles the deltas as a streaming client does.
Parsed parse(const std::string& text, const std::vector<size_t>& sizes) {
  ToolCallParser p(ToolCallFormat::dsml, "call_");
  Parsed out;
  auto take = [&](const ToolCallParser::Out& o) {
    out.content += o.content;
    for (const auto& d : o.calls) {
      if (!d.id.empty()) {
        EXPECT_EQ(size_t(d.index), out.calls.size());
        out.calls.push_back({d.id, d.name, ""});
      }
      out.calls.at(size_t(d.index)).arguments += d.arguments;
    }
  };
  size_t at = 0;
  for (size_t i = 0; at < text.size(); ++i) {
    const size_t n = sizes.empty() || sizes[i % sizes.size()] == 0 ? text.size() : sizes[i % sizes.size()];
    take(p.feed(text.substr(at, n)));
    at += n;
  }
  take(p.flush());
  EXPECT_EQ(p.calls().size(), out.calls.size());
  for (size_t i = 0; i < out.calls.size() && i < p.calls().size(); ++i)
    EXPECT_EQ(p.calls()[i].arguments, out.calls[i].arguments);
  return out;
}

TEST(DsmlParser, MatchesDeepSeekParserInEverySplit) {
  std::ifstream in("tests/data/dsv32_dsml/parse_cases.json");
  const json cases = json::parse(in).at("cases");
  ASSERT_EQ(cases.size(), 5u);
  std::mt19937 rng(7);
  for (const json& c : cases) {
    std::string text = c.at("text");
    ASSERT_EQ(text.substr(text.size() - kEos.size()), kEos);
    text.resize(text.size() - kEos.size());  // the engine stops at EOS; it is not in the reply's text
    std::vector<std::vector<size_t>> splits = {{}, {1}, {2}, {3, 7, 1}};
    for (int r = 0; r < 5; ++r) {
      std::vector<size_t> s(8);
      for (auto& n : s) n = 1 + rng() % 12;
      splits.push_back(s);
    }
    for (const auto& split : splits) {
      const Parsed p = parse(text, split);
      EXPECT_EQ(p.content, c.at("content").get<std::string>()) << text;
      ASSERT_EQ(p.calls.size(), c.at("tool_calls").size()) << text;
      for (size_t i = 0; i < p.calls.size(); ++i) {
        const json& want = c.at("tool_calls")[i].at("function");
        EXPECT_EQ(p.calls[i].id, "call_" + std::to_string(i));
        EXPECT_EQ(p.calls[i].name, want.at("name").get<std::string>());
        EXPECT_EQ(p.calls[i].arguments, want.at("arguments").get<std::string>()) << text;  // byte for byte
      }
    }
  }
}

TEST(DsmlParser, CallsWrittenByTheEncoderParseBack) {
  const ojson args1 = ojson::parse(R"({"city": "Paris", "n": 3, "opts": {"a": [1, "x"]}, "q": "line\n\"two\" ü"})");
  const ojson args2 = ojson::object();
  const ojson messages = {
      {{"role", "user"}, {"content", "go"}},
      {{"role", "assistant"},
       {"content", "On it."},
       {"tool_calls",
        {{{"type", "function"}, {"function", {{"name", "f"}, {"arguments", args1.dump()}}}},
         {{"type", "function"}, {"function", {{"name", "g"}, {"arguments", args2.dump()}}}}}}}};
  const std::string prompt = dsv32::encode_messages(messages, {});
  const std::string head = "<｜Assistant｜></think>";
  const size_t from = prompt.find(head) + head.size(), to = prompt.rfind(kEos);
  const Parsed p = parse(prompt.substr(from, to - from), {1});
  EXPECT_EQ(p.content, "On it.");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "f");
  EXPECT_EQ(json::parse(p.calls[0].arguments), json::parse(args1.dump()));
  EXPECT_EQ(p.calls[1].name, "g");
  EXPECT_EQ(p.calls[1].arguments, "{}");
}

TEST(DsmlParser, MalformedAndCutShortMarkup) {
  const std::string open = "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n";
  // Cut short inside a string value: the call ends with what it had, its arguments closed.
  Parsed p = parse(open + "<｜DSML｜parameter name=\"q\" string=\"true\">ab\"c", {2});
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments, "{\"q\": \"ab\\\"c\"}");
  // Cut short before the name is complete: no call, and nothing else.
  p = parse("Hi\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"pa", {1});
  EXPECT_EQ(p.content, "Hi");
  EXPECT_TRUE(p.calls.empty());
  // Not DSML inside a call: the call is closed and the text is content, not lost.
  p = parse(open + "oops</｜DSML｜invoke>", {3});
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments, "{}");
  EXPECT_EQ(p.content, "oops</｜DSML｜invoke>");
  // A bad string attribute.
  p = parse(open + "<｜DSML｜parameter name=\"q\" string=\"maybe\">1</｜DSML｜parameter>", {});
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].arguments, "{}");
  EXPECT_NE(p.content.find("maybe"), std::string::npos);
  // Text after the block is content; newlines that turn out not to precede a block are kept.
  p = parse(open + "</｜DSML｜invoke>\n</｜DSML｜function_calls> done\n\n", {1});
  EXPECT_EQ(p.content, " done\n\n");
  // Partial-looking text that never becomes a tag comes out whole.
  p = parse("a <｜DSML｜func", {1});
  EXPECT_EQ(p.content, "a <｜DSML｜func");
}

}  // namespace
}  // namespace moe::server
