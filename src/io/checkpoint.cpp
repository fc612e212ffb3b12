#include "io/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace moe {

namespace fs = std::filesystem;

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) fail("model directory {} does not exist", dir);
  std::vector<std::string> shard_names;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  std::map<std::string, std::string> weight_map;
  if (fs::exists(index_path)) {
    std::ifstream in(index_path);
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", index_path.string(), e.what());
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: missing weight_map", index_path.string());
    std::set<std::string> seen;
    for (auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) fail("{}: weight_map entry '{}' is not a file name", index_path.string(), name);
      const std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        fail("{}: weight_map entry '{}' names a path outside the directory: {}", index_path.string(), name, f);
      weight_map[name] = f;
      if (seen.insert(f).second) shard_names.push_back(f);
    }
  } else if (fs::exists(single)) {
    shard_names.push_back("model.safetensors");
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json", dir);
  }
  for (const auto& name : shard_names) {
    files_.push_back(std::make_unique<SafetensorsFile>((fs::path(dir) / name).string()));
    const size_t fi = files_.size() - 1;
    for (const auto& e : files_[fi]->entries()) {
      auto it = weight_map.find(e.name);
      if (!weight_map.empty() && it != weight_map.end() && it->second != name) continue;  // index decides
      locate_[e.name] = {fi, &e};
    }
  }
  for (const auto& [name, file] : weight_map) {
    if (!locate_.count(name))
      fail("{}: tensor '{}' is listed in model.safetensors.index.json but missing from {}", dir, name, file);
  }
}

std::optional<TensorView> Checkpoint::find(const std::string& name) const {
  auto it = locate_.find(name);
  if (it == locate_.end()) return std::nullopt;
  return files_[it->second.first]->view(*it->second.second);
}

TensorView Checkpoint::get(const std::string& name) const {
  auto v = find(name);
  if (!v) fail("{}: missing tensor '{}'", dir_, name);
  return *v;
}

TensorView Checkpoint::get(const std::string& name, const Shape& expected) const {
  TensorView v = get(name);
  if (!(v.shape == expected))
    fail("{}: tensor '{}' has shape {} but config.json implies {}", file_of(name), name, v.shape.str(),
         expected.str());
  return v;
}

std::string Checkpoint::file_of(const std::string& name) const {
  auto it = locate_.find(name);
  if (it == locate_.end()) return dir_;
  return files_[it->second.first]->path();
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, loc] : locate_) out.push_back(name);
  return out;
}

}  // namespace moe
