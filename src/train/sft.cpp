#include "train/sft.h"

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::train {

SftExample render_sft(const Tokenizer& tok, const nlohmann::json& messages, const std::string& where) {
  MOE_CHECK(messages.is_array() && !messages.empty(), "{}: \"messages\" is not a non-empty list", where);
  for (size_t i = 0; i < messages.size(); ++i)
    MOE_CHECK(messages[i].is_object() && messages[i].contains("role") && messages[i]["role"].is_string(),
              "{}: messages[{}] is not an object with a \"role\" string", where, i);
  MOE_CHECK(tok.eos_id().has_value(), "{}: the tokenizer has no EOS token", where);
  const ChatTemplate& tmpl = tok.chat_template();
  SftExample ex;
  std::string done;  // the text rendered so far
  auto emit = [&](const std::string& text, uint8_t loss) {
    const std::vector<int32_t> ids = tok.encode(text, false);
    ex.ids.insert(ex.ids.end(), ids.begin(), ids.end());
    ex.loss.insert(ex.loss.end(), ids.size(), loss);
  };
  auto extend = [&](const std::string& longer, const std::string& what) {
    MOE_CHECK(longer.compare(0, done.size(), done) == 0,
              "{}: the chat template's rendering of {} does not begin with what it rendered before it, so the "
              "assistant turns cannot be told apart", where, what);
    return longer.substr(done.size());
  };
  bool any = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"] != "assistant") continue;
    any = true;
    const nlohmann::json before(messages.begin(), messages.begin() + std::ptrdiff_t(i));
    const std::string prompt = tmpl.render(before, true);
    emit(extend(prompt, fmt::format("the prompt before messages[{}]", i)), 0);
    done = prompt;
    const nlohmann::json upto(messages.begin(), messages.begin() + std::ptrdiff_t(i + 1));
    const std::string turn = tmpl.render(upto, false);
    emit(extend(turn, fmt::format("messages[0..{}]", i)), 1);
    done = turn;
  }
  MOE_CHECK(any, "{}: no assistant message: nothing would carry loss", where);
  emit(extend(tmpl.render(messages, false), "the whole conversation"), 0);
  if (ex.ids.empty() || ex.ids.back() != *tok.eos_id()) ex.ids.push_back(*tok.eos_id()), ex.loss.push_back(0);
  return ex;
}

}  // namespace moe::train
