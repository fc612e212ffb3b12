#include "cli/conversation.h"

#include <fstream>
#include <iterator>

#include "core/error.h"
#include "core/json_depth.h"

namespace moe::cli {

nlohmann::json parse_conversation(std::string_view text, const std::string& name) {
  // A conversation nests 3 levels; the bound keeps a hostile file from building a deep document.
  if (json_nesting_depth(text) > kMaxJsonDepth) fail("{}: JSON nested deeper than {} levels", name, kMaxJsonDepth);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", name, e.what());
  }
  if (!j.is_array()) fail("{}: expected a JSON array of messages, found {}", name, j.type_name());
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& m = j[i];
    if (!m.is_object()) fail("{}: message {} is {}, not an object", name, i, m.type_name());
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) fail("{}: message {} has no \"role\" string", name, i);
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant")
      fail("{}: message {} has role \"{}\"; expected system, user or assistant", name, i, r);
    const auto content = m.find("content");
    if (content == m.end() || !content->is_string()) fail("{}: message {} has no \"content\" string", name, i);
  }
  return j;
}

nlohmann::json load_conversation(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open", path);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail("{}: read error", path);
  return parse_conversation(text, path);
}

void save_conversation(const std::string& path, const nlohmann::json& messages) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail("{}: cannot write", path);
  f << messages.dump(2) << "\n";
  f.close();
  if (!f) fail("{}: write error", path);
}

}  // namespace moe::cli
