#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe {

using json = nlohmann::json;

std::vector<SafetensorsEntry> parse_safetensors_header(std::string_view header_json, uint64_t data_size,
                                                       const std::string& source) {
  json header;
  try {
    header = json::parse(header_json);
  } catch (const json::exception& e) {
    fail("{}: safetensors header is not valid JSON: {}", source, e.what());
  }
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", source);
  std::vector<SafetensorsEntry> entries;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object()) fail("{}: tensor '{}': header entry is not an object", source, name);
    SafetensorsEntry e;
    e.name = name;
    auto dt = info.find("dtype");
    if (dt == info.end() || !dt->is_string()) fail("{}: tensor '{}': missing dtype", source, name);
    if (!parse_dtype(dt->get<std::string>(), &e.dtype))
      fail("{}: tensor '{}': unsupported dtype {}", source, name, dt->get<std::string>());
    auto sh = info.find("shape");
    if (sh == info.end() || !sh->is_array()) fail("{}: tensor '{}': missing shape", source, name);
    if (sh->size() > 4) fail("{}: tensor '{}': rank {} is above 4", source, name, sh->size());
    e.shape.rank = int(sh->size());
    uint64_t numel = 1;
    for (size_t i = 0; i < sh->size(); ++i) {
      const auto& d = (*sh)[i];
      if (!d.is_number_unsigned()) fail("{}: tensor '{}': shape entry {} is not a non-negative integer", source, name, i);
      const uint64_t v = d.get<uint64_t>();
      if (v > (uint64_t(1) << 40)) fail("{}: tensor '{}': dimension {} is implausibly large", source, name, v);
      e.shape.dims[i] = int64_t(v);
      numel *= v;
      if (numel > (uint64_t(1) << 48)) fail("{}: tensor '{}': too many elements", source, name);
    }
    auto off = info.find("data_offsets");
    if (off == info.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail("{}: tensor '{}': data_offsets must be two non-negative integers", source, name);
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.end < e.begin) fail("{}: tensor '{}': data_offsets end before they begin", source, name);
    if (e.end > data_size)
      fail("{}: tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes; file truncated?)",
           source, name, e.begin, e.end, data_size);
    if (e.end - e.begin != numel * dtype_size(e.dtype))
      fail("{}: tensor '{}': {} bytes do not match dtype {} x shape {}", source, name, e.end - e.begin,
           dtype_name(e.dtype), e.shape.str());
    entries.push_back(std::move(e));
  }
  // Overlap check: sort by offset, each must start at or after the previous end.
  std::vector<const SafetensorsEntry*> sorted;
  for (auto& e : entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end && sorted[i]->end > sorted[i]->begin)
      fail("{}: tensors '{}' and '{}' overlap in the data section", source, sorted[i - 1]->name, sorted[i]->name);
  }
  return entries;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  const size_t size = file_->size();
  if (size < 8) fail("{}: too short for a safetensors file ({} bytes)", path, size);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_->data(), 8);  // little-endian on every platform we build for
  if (header_len > size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes; truncated?)", path, header_len, size);
  const std::string_view header(reinterpret_cast<const char*>(file_->data() + 8), header_len);
  data_ = file_->data() + 8 + header_len;
  entries_ = parse_safetensors_header(header, size - 8 - header_len, path);
  for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].name] = i;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

TensorView SafetensorsFile::view(const SafetensorsEntry& e) const {
  TensorView v;
  v.data = const_cast<uint8_t*>(data_ + e.begin);
  v.dtype = e.dtype;
  v.shape = e.shape;
  v.device = Device::host();
  return v;
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    json shape = json::array();
    for (int i = 0; i < t.view.shape.rank; ++i) shape.push_back(t.view.shape[i]);
    header[t.name] = {{"dtype", std::string(dtype_name(t.view.dtype))},
                      {"shape", shape},
                      {"data_offsets", {offset, offset + t.view.nbytes()}}};
    offset += t.view.nbytes();
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8) text.push_back(' ');  // align the data section to 8 bytes
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write {}", path);
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), std::streamsize(text.size()));
  for (const auto& t : tensors) out.write(static_cast<const char*>(t.view.data), std::streamsize(t.view.nbytes()));
  if (!out) fail("error writing {}", path);
}

}  // namespace moe
