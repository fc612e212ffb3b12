#include "train/tokenizer_training.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "train/data.h"

namespace moe::train {

namespace {

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  MOE_CHECK(out.good(), "{}: cannot write", path.string());
}

}  // namespace

BpeTrainStats train_tokenizer(const std::vector<std::string>& files, const TokenizerTrainingOptions& o) {
  namespace fs = std::filesystem;
  MOE_CHECK(!o.out_dir.empty(), "train-tokenizer: give --out DIR");
  MOE_CHECK(!files.empty(), "train-tokenizer: no input files");
  BpeTrainer trainer(read_file((fs::path(o.template_dir) / "tokenizer.json").string()), o.bpe);
  for (const std::string& f : files) {
    const std::string text = read_file(f);
    const bool jsonl = f.size() >= 6 && f.substr(f.size() - 6) == ".jsonl";
    if (!jsonl) {
      trainer.add_document(text);
      continue;
    }
    size_t at = 0;
    for (int64_t ln = 1; at < text.size(); ++ln) {
      size_t nl = text.find('\n', at);
      if (nl == std::string::npos) nl = text.size();
      const std::string line = text.substr(at, nl - at);
      at = nl + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        fail("{}:{}: not valid JSON: {}", f, ln, e.what());
      }
      MOE_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(),
                "{}:{}: not a JSON object with a \"text\" string", f, ln);
      trainer.add_document(j["text"].get<std::string>());
    }
  }
  MOE_CHECK(trainer.stats().documents > 0, "train-tokenizer: no documents in the input");
  const std::string tokenizer_json = trainer.train();

  nlohmann::json config = nlohmann::json::object();
  const fs::path config_path = fs::path(o.template_dir) / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    try {
      config = nlohmann::json::parse(read_file(config_path.string()));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", config_path.string(), e.what());
    }
    MOE_CHECK(config.is_object(), "{}: not a JSON object", config_path.string());
  }
  config.erase("added_tokens_decoder");
  config["tokenizer_class"] = "PreTrainedTokenizerFast";
  fs::create_directories(o.out_dir);
  write_text(fs::path(o.out_dir) / "tokenizer.json", tokenizer_json);
  write_text(fs::path(o.out_dir) / "tokenizer_config.json", config.dump(1));
  return trainer.stats();
}

}  // namespace moe::train
