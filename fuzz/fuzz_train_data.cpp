// libFuzzer target: the trainer's data files (tokenize-corpus output) on arbitrary bytes. The first byte picks the
// file the rest of the input becomes: 0 manifest.json, 1 a token shard, 2 an SFT loss-mask file; the other files
// are a small valid SFT data set (two documents), so a fuzzed shard or mask meets a manifest that lists it. Only
// moe::Error may escape, and what reads back must be consistent.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/data.h"

namespace {

void write(const std::string& path, const void* data, size_t size) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(static_cast<const char*>(data), std::streamsize(size));
}

std::string mask_file(const std::vector<uint8_t>& mask) {
  std::string s = "MOEMSK01";
  const uint64_t n = mask.size();
  s.append(reinterpret_cast<const char*>(&n), 8);
  s.append(reinterpret_cast<const char*>(mask.data()), mask.size());
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/fuzz-train-data-XXXXXX";
    if (!mkdtemp(tmpl)) std::abort();
    return std::string(tmpl);
  }();
  if (size == 0) return 0;
  const std::vector<int32_t> ids = {5, 6, 1, 7, 1};           // two documents
  const std::vector<uint8_t> mask = {2, 1, 1, 2, 1};          // starts at 0 and 3; loss on 1, 2, 4
  moe::train::write_shard(dir + "/train-00000.bin", ids);
  const std::string mf = mask_file(mask);
  write(dir + "/train-00000.bin.mask", mf.data(), mf.size());
  const std::string manifest =
      R"({"format": "moe-tokens-1", "vocab_size": 16, "eos_id": 1, "sft": true, "train": [{"file": "train-00000.bin",)"
      R"( "tokens": 5, "documents": 2, "fnv1a64": ")" +
      [&] {
        char buf[17];
        snprintf(buf, sizeof buf, "%016llx", (unsigned long long)moe::train::fnv1a64(ids.data(), ids.size() * 4));
        return std::string(buf);
      }() + R"(", "mask_fnv1a64": ")" + [&] {
        char buf[17];
        snprintf(buf, sizeof buf, "%016llx", (unsigned long long)moe::train::fnv1a64(mask.data(), mask.size()));
        return std::string(buf);
      }() + R"("}], "val": []})";
  write(dir + "/manifest.json", manifest.data(), manifest.size());
  const char* names[3] = {"/manifest.json", "/train-00000.bin", "/train-00000.bin.mask"};
  write(dir + names[data[0] % 3], data + 1, size - 1);
  try {
    const moe::train::Manifest m = moe::train::Manifest::load(dir);
    std::vector<std::vector<uint8_t>> masks;
    const auto docs = m.read_split("train", m.sft ? &masks : nullptr);
    for (size_t d = 0; d < docs.size(); ++d) {
      for (int32_t id : docs[d])
        if (id < 0 || id >= m.vocab_size) __builtin_trap();  // read_split must have rejected it
      if (m.sft && masks[d].size() != docs[d].size()) __builtin_trap();
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
