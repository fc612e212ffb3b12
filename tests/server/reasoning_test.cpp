#include <gtest/gtest.h>

#include "server/reasoning.h"

namespace moe::server {
namespace {

// Feeds `text` split into pieces of `step` bytes; returns {reasoning, content}.
std::pair<std::string, std::string> run(bool enabled, bool in_reasoning, const std::string& text, size_t step) {
  ReasoningParser p(enabled, in_reasoning);
  std::string r, c;
  for (size_t i = 0; i < text.size(); i += step) {
    auto d = p.feed(text.substr(i, step));
    r += d.reasoning;
    c += d.content;
  }
  auto d = p.flush();
  return {r + d.reasoning, c + d.content};
}

TEST(Reasoning, R1PromptOpensThinkOnlyCloseTagInOutput) {
  EXPECT_TRUE(prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜><think>\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜>"));
  EXPECT_FALSE(prompt_opens_reasoning("<｜Assistant｜></think>"));  // hybrid model with thinking off
  for (size_t step : {1, 2, 3, 5, 100}) {
    auto [r, c] = run(true, true, "Let me think.\nOK.</think>\n\nThe answer is 4.", step);
    EXPECT_EQ(r, "Let me think.\nOK.") << step;
    EXPECT_EQ(c, "The answer is 4.") << step;
  }
}

TEST(Reasoning, BothTagsWritten) {
  for (size_t step : {1, 4, 7, 100}) {
    auto [r, c] = run(true, false, "<think>\nhmm</think>\n\nDone <think> stays", step);
    EXPECT_EQ(r, "\nhmm") << step;
    EXPECT_EQ(c, "Done <think> stays") << step;
  }
}

TEST(Reasoning, NonReasoningModelGetsEverythingInContent) {
  auto [r, c] = run(false, true, "<think>x</think>y", 2);
  EXPECT_EQ(r, "");
  EXPECT_EQ(c, "<think>x</think>y");
  auto [r2, c2] = run(true, false, "plain answer < 3", 1);
  EXPECT_EQ(r2, "");
  EXPECT_EQ(c2, "plain answer < 3");
  EXPECT_FALSE(template_supports_reasoning("{{ bos_token }}{% for m in messages %}{% endfor %}"));
  EXPECT_TRUE(template_supports_reasoning("{% set c = c.split('</think>')[-1] %}"));
}

TEST(Reasoning, UnfinishedThinkingStaysReasoning) {
  auto [r, c] = run(true, true, "still thinking </thi", 3);
  EXPECT_EQ(r, "still thinking </thi");
  EXPECT_EQ(c, "");
}

}  // namespace
}  // namespace moe::server
