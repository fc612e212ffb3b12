#pragma once
// Supervised fine-tuning data: a conversation (OpenAI-format messages) rendered with the model's chat template,
// with a loss mask that is 1 exactly on the tokens of the assistant turns (each turn's text and the template's
// end-of-turn tokens, e.g. DeepSeek's <｜end▁of▁sentence｜>), 0 on the system prompt, user turns and the
// template's role markers (<｜Assistant｜> is the prompt, not something to learn).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {
class Tokenizer;
}

namespace moe::train {

struct SftExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss;  // [ids.size()]: 1 where the token is a target that carries loss
};

// For each assistant message i, the prompt render(messages[0..i), add_generation_prompt) must extend what was
// rendered before it and render(messages[0..i]) must extend that prompt; the difference is the assistant turn.
// The pieces are tokenized one by one (so a token never straddles a turn boundary) and concatenated; an EOS
// (no loss) ends the example unless the template already did. `where` names the input (file:line) in errors:
// no assistant turn, a template that does not render prefixes consistently, a message that is not an object.
SftExample render_sft(const Tokenizer& tok, const nlohmann::json& messages, const std::string& where);

}  // namespace moe::train
