// libFuzzer target: `moe tokenize-corpus` input (JSONL documents with "text" and an optional "code" flag) on
// arbitrary bytes, with fill-in-the-middle at rate 1/2 (seed from the first byte) and a validation split, through
// models/moe-tiny's tokenizer (run from the repository root, as scripts/fuzz.sh does). Only moe::Error may escape;
// what tokenize_corpus reports must be what reads back, and a rearranged document must hold each FIM marker once,
// in PSM order, before its EOS.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"
#include "train/fim.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/fuzz-corpus-jsonl-XXXXXX";
    if (!mkdtemp(tmpl)) std::abort();
    return std::string(tmpl);
  }();
  static const std::string tok_dir = "models/moe-tiny";
  static const moe::Tokenizer tok = moe::Tokenizer::load(tok_dir);
  static const moe::train::FimTokens fim = moe::train::FimTokens::from(tok, tok_dir);
  if (size == 0) return 0;
  std::ofstream(dir + "/in.jsonl", std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data + 1), std::streamsize(size - 1));
  std::filesystem::remove_all(dir + "/out");
  moe::train::CorpusOptions o;
  o.tokenizer_dir = tok_dir;
  o.out_dir = dir + "/out";
  o.val_fraction = 0.25;
  o.fim_rate = 0.5;
  o.fim_seed = data[0];
  try {
    const moe::train::CorpusStats st = moe::train::tokenize_corpus({dir + "/in.jsonl"}, o);
    const moe::train::Manifest m = moe::train::Manifest::load(o.out_dir);
    const auto train = m.read_split("train");
    if (int64_t(train.size()) != st.documents[0] || st.fim_documents > st.code_documents) __builtin_trap();
    int64_t rearranged = 0;
    for (const auto& d : train) {
      if (d.empty() || d.back() != m.eos_id) __builtin_trap();
      if (d[0] != fim.begin) continue;  // (a document's own text may spell a marker; only PSM ones are checked)
      ++rearranged;
      const auto hole = std::find(d.begin(), d.end(), fim.hole), end = std::find(d.begin(), d.end(), fim.end);
      if (hole == d.end() || end == d.end() || hole > end) __builtin_trap();
    }
    if (rearranged < st.fim_documents) __builtin_trap();
  } catch (const moe::Error&) {
  }
  return 0;
}
