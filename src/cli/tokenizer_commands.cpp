// moe tokenize / moe chat-template: the tokenizer and chat template from the command line, JSON in and out.
#include <nlohmann/json.hpp>

#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/json_depth.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {
namespace {

using json = nlohmann::json;

struct TokenizerOptions {
  std::string tokenizer_dir, model_dir;
  std::string directory() const {
    if (!tokenizer_dir.empty()) return tokenizer_dir;
    if (!model_dir.empty()) return model_dir;
    fail("give --tokenizer DIR (or --model DIR, whose tokenizer files are used)");
  }
};

void add_tokenizer_options(CLI::App* sub, const std::shared_ptr<TokenizerOptions>& options) {
  sub->add_option("--tokenizer", options->tokenizer_dir, "Directory holding tokenizer.json and tokenizer_config.json");
  sub->add_option("--model", options->model_dir, "Model directory (the tokenizer defaults to it)");
}

template <typename Json = json>
Json parse_json(const std::string& text, const std::string& where) {
  // Checked on the text: a deeper document would overflow the stack when copied or rendered.
  if (json_nesting_depth(text) > kMaxJsonDepth) fail("{}: JSON nesting deeper than {} levels", where, kMaxJsonDepth);
  try {
    return Json::parse(text);
  } catch (const json::parse_error& e) {
    fail("{}: invalid JSON: {}", where, e.what());
  }
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void run_tokenize(const TokenizerOptions& options, bool decode) {
  const Tokenizer tokenizer = Tokenizer::load(options.directory());
  std::string line;
  for (size_t line_number = 1; std::getline(std::cin, line); ++line_number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("stdin line {}", line_number);
    const json input = parse_json(line, where);
    if (decode) {
      if (!input.is_array()) fail("{}: expected a JSON array of token ids", where);
      std::vector<int32_t> ids;
      for (const json& id : input) {
        if (!id.is_number_integer()) fail("{}: token ids must be integers, got {}", where, id.dump());
        const auto value = id.get<int64_t>();
        if (value < INT32_MIN || value > INT32_MAX) fail("{}: token id {} is outside the vocabulary", where, value);
        ids.push_back(static_cast<int32_t>(value));
      }
      std::cout << dump(tokenizer.decode(ids)) << '\n';
    } else {
      if (!input.is_string()) fail("{}: expected a JSON string", where);
      std::cout << dump(tokenizer.encode(input.get<std::string>())) << '\n';
    }
    std::cout.flush();
  }
}

void run_chat_template(const TokenizerOptions& options, bool add_generation_prompt, bool ids,
                       const std::string& context_json) {
  const Tokenizer tokenizer = Tokenizer::load(options.directory());
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  // Ordered JSON: object keys keep their order, as in Python, for templates that print them (tools | tojson).
  auto messages = parse_json<nlohmann::ordered_json>(input, "stdin");
  if (messages.is_object() && messages.contains("messages")) messages = messages["messages"];
  if (!messages.is_array()) fail("stdin: expected a JSON array of {{\"role\", \"content\"}} messages");
  const auto context = context_json.empty() ? nlohmann::ordered_json::object()
                                            : parse_json<nlohmann::ordered_json>(context_json, "--context");
  if (!context.is_object()) fail("--context must be a JSON object");
  const std::string text = tokenizer.chat_template().render(messages, add_generation_prompt, context);
  if (ids)
    std::cout << dump(tokenizer.encode(text)) << '\n';
  else
    std::cout << text;
}

}  // namespace

void register_tokenizer_commands(CLI::App& app) {
  {
    auto* sub = app.add_subcommand("tokenize", "Encode JSON strings (one per line on stdin) to JSON arrays of ids");
    auto options = std::make_shared<TokenizerOptions>();
    auto decode = std::make_shared<bool>(false);
    add_tokenizer_options(sub, options);
    sub->add_flag("--decode", *decode, "Read JSON arrays of ids and write JSON strings instead");
    sub->callback([options, decode] { run_tokenize(*options, *decode); });
  }
  {
    auto* sub = app.add_subcommand("chat-template", "Render a JSON array of chat messages (stdin) with the chat template");
    auto options = std::make_shared<TokenizerOptions>();
    auto generation_prompt = std::make_shared<bool>(false);
    auto ids = std::make_shared<bool>(false);
    auto context = std::make_shared<std::string>();
    add_tokenizer_options(sub, options);
    sub->add_flag("--add-generation-prompt", *generation_prompt, "End with the assistant's turn opening");
    sub->add_flag("--ids", *ids, "Write the rendered text's token ids (one JSON array) instead of the text");
    sub->add_option("--context", *context, "Extra template variables as a JSON object, e.g. {\"thinking\": true}");
    sub->callback([options, generation_prompt, ids, context] {
      run_chat_template(*options, *generation_prompt, *ids, *context);
    });
  }
}

}  // namespace moe::cli
