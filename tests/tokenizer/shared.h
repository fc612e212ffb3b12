#pragma once
// The DeepSeek-V3 tokenizer, loaded once for the whole test binary (it is 7.8 MB of JSON).
#include <nlohmann/json.hpp>

#include <fstream>

#include "tokenizer/tokenizer.h"

namespace moe::test {

inline const Tokenizer& deepseek_v3() {
  static const Tokenizer tokenizer = Tokenizer::load("models/deepseek-v3-tokenizer");
  return tokenizer;
}

inline const nlohmann::json& reference() {
  static const nlohmann::json data = [] {
    std::ifstream in("tests/data/tiny-dsv3/tokenizer-reference.json");
    return nlohmann::json::parse(in);
  }();
  return data;
}

}  // namespace moe::test
