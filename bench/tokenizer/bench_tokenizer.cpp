// Single-thread encode throughput on real text: bench_tokenizer [--dump-ids PREFIX] TOKENIZER_DIR CORPUS...
// (corpora from make_corpus.sh). --dump-ids writes each chunk's ids, one JSON array per line, to
// PREFIX.<corpus file name>.jsonl, the format hf_tokenizers_bench.py --dump-ids writes.
// Each corpus is cut into ~16 KiB chunks at line ends (hf_tokenizers_bench.py cuts the same way) and encoded
// chunk by chunk. Reports the first pass (cold word cache) and the best of the following passes, in MB/s
// (10^6 bytes per second), plus a decode pass.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

std::vector<std::string> chunks_of(const std::string& text, size_t target) {
  std::vector<std::string> chunks;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = std::min(text.size(), start + target);
    if (end < text.size()) {
      const size_t newline = text.find('\n', end);
      end = newline == std::string::npos ? text.size() : newline + 1;
    }
    chunks.push_back(text.substr(start, end - start));
    start = end;
  }
  return chunks;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string dump_prefix;
  int first_arg = 1;
  if (argc > 2 && std::string(argv[1]) == "--dump-ids") {
    dump_prefix = argv[2];
    first_arg = 3;
  }
  if (argc < first_arg + 2) {
    std::fprintf(stderr, "usage: %s [--dump-ids PREFIX] TOKENIZER_DIR CORPUS...\n", argv[0]);
    return 1;
  }
  try {
    const moe::Tokenizer tokenizer = moe::Tokenizer::load(argv[first_arg]);
    for (int arg = first_arg + 1; arg < argc; ++arg) {
      std::ifstream in(argv[arg], std::ios::binary);
      if (!in) moe::fail("cannot read {}", argv[arg]);
      std::stringstream buffer;
      buffer << in.rdbuf();
      const std::string text = buffer.str();
      const auto chunks = chunks_of(text, 16 * 1024);
      const double megabytes = static_cast<double>(text.size()) / 1e6;

      size_t tokens = 0;
      double first = 0, best = 1e30;
      std::vector<std::vector<int32_t>> encoded(chunks.size());
      for (int pass = 0; pass < 4; ++pass) {
        tokens = 0;
        const auto start = std::chrono::steady_clock::now();
        for (size_t i = 0; i < chunks.size(); ++i) {
          encoded[i] = tokenizer.encode(chunks[i]);
          tokens += encoded[i].size();
        }
        const double elapsed = seconds_since(start);
        if (pass == 0) first = elapsed;
        else best = std::min(best, elapsed);
      }
      const auto start = std::chrono::steady_clock::now();
      size_t decoded_bytes = 0;
      for (const auto& ids : encoded) decoded_bytes += tokenizer.decode(ids).size();
      const double decode_seconds = seconds_since(start);
      if (decoded_bytes != text.size()) moe::fail("{}: decoding did not give the text back", argv[arg]);

      if (!dump_prefix.empty()) {
        std::string name = argv[arg];
        name = name.substr(name.find_last_of('/') + 1);
        std::ofstream out(dump_prefix + "." + name + ".jsonl");
        for (const auto& ids : encoded) out << fmt::format("[{}]\n", fmt::join(ids, ", "));
      }
      fmt::print("{}: {:.2f} MB, {} tokens ({:.2f} bytes/token)\n", argv[arg], megabytes, tokens,
                 static_cast<double>(text.size()) / static_cast<double>(tokens));
      fmt::print("  encode, 1 thread: {:.2f} MB/s first pass (cold cache), {:.2f} MB/s best warm pass\n",
                 megabytes / first, megabytes / best);
      fmt::print("  decode, 1 thread: {:.1f} MB/s\n", megabytes / decode_seconds);
    }
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
