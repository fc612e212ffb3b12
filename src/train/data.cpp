#include "train/data.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <thread>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"
#include "tokenizer/tokenizer.h"
#include "train/fim.h"
#include "train/sft.h"

namespace fs = std::filesystem;

namespace moe::train {

namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', '0', '1'};
constexpr char kMaskMagic[8] = {'M', 'O', 'E', 'M', 'S', 'K', '0', '1'};
constexpr uint8_t kLoss = 1, kDocStart = 2;  // mask file bits
constexpr int64_t kHeader = 16;

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }


struct ShardWriter {
  std::string dir, split;
  int64_t shard_tokens;
  std::vector<ShardInfo> shards;
  bool sft = false;
  std::vector<int32_t> cur;
  std::vector<uint8_t> cur_mask;
  int64_t cur_docs = 0;

  void add(const std::vector<int32_t>& doc, const std::vector<uint8_t>* loss = nullptr) {
    if (sft) {
      for (size_t i = 0; i < doc.size(); ++i) cur_mask.push_back(uint8_t(((*loss)[i] ? kLoss : 0) | (i == 0 ? kDocStart : 0)));
    }
    cur.insert(cur.end(), doc.begin(), doc.end());
    ++cur_docs;
    if (int64_t(cur.size()) >= shard_tokens) flush();
  }
  void flush() {
    if (cur.empty()) return;
    ShardInfo s;
    s.file = fmt::format("{}-{:05d}.bin", split, shards.size());
    s.tokens = int64_t(cur.size());
    s.documents = cur_docs;
    s.checksum = fnv1a64(cur.data(), cur.size() * 4);
    write_shard(dir + "/" + s.file, cur);
    if (sft) {
      s.mask_checksum = fnv1a64(cur_mask.data(), cur_mask.size());
      std::ofstream out(dir + "/" + s.file + ".mask", std::ios::binary | std::ios::trunc);
      const uint64_t n = cur_mask.size();
      out.write(kMaskMagic, 8);
      out.write(reinterpret_cast<const char*>(&n), 8);
      out.write(reinterpret_cast<const char*>(cur_mask.data()), std::streamsize(n));
      MOE_CHECK(out.good(), "{}/{}.mask: error writing", dir, s.file);
      cur_mask.clear();
    }
    shards.push_back(s);
    cur.clear();
    cur_docs = 0;
  }
};

nlohmann::json shards_json(const std::vector<ShardInfo>& shards, bool sft) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& s : shards) {
    a.push_back({{"file", s.file}, {"tokens", s.tokens}, {"documents", s.documents}, {"fnv1a64", hex64(s.checksum)}});
    if (sft) a.back()["mask_fnv1a64"] = hex64(s.mask_checksum);
  }
  return a;
}

}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), "{}: cannot open", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint64_t fnv1a64(const void* data, size_t bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

void write_shard(const std::string& path, const std::vector<int32_t>& ids) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  MOE_CHECK(out.good(), "{}: cannot write", path);
  const uint64_t n = ids.size();
  out.write(kMagic, 8);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(reinterpret_cast<const char*>(ids.data()), std::streamsize(ids.size() * 4));
  MOE_CHECK(out.good(), "{}: error writing", path);
}

namespace {

// One unit of input: a plain file's whole text, or one JSONL line (line > 0), tokenized independently of the rest.
struct Piece {
  std::string text, file;
  int64_t line = 0;
  std::string where() const { return line > 0 ? fmt::format("{}:{}", file, line) : file; }
};

// A piece's tokens (ending in EOS) and, for SFT, their loss flags; or the error it raised.
struct Encoded {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss;
  bool code = false;  // the JSONL object's "code": true
  std::exception_ptr error;
};

// Runs on any thread: the tokenizer and the chat template are safe to share (tokenizer.h).
Encoded encode_piece(const Tokenizer& tok, int32_t eos, bool sft, const Piece& p) {
  Encoded e;
  std::string text;
  if (p.line > 0) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(p.text);
    } catch (const nlohmann::json::exception& ex) {
      fail("{}: not valid JSON: {}", p.where(), ex.what());
    }
    if (sft) {
      MOE_CHECK(j.is_object() && j.contains("messages"), "{}: not a JSON object with \"messages\"", p.where());
      SftExample ex = render_sft(tok, j["messages"], p.where());
      e.ids = std::move(ex.ids);
      e.loss = std::move(ex.loss);
      return e;
    }
    MOE_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(),
              "{}: not a JSON object with a \"text\" string", p.where());
    text = j["text"].get<std::string>();
    if (j.contains("code")) {
      MOE_CHECK(j["code"].is_boolean(), "{}: \"code\" must be true or false", p.where());
      e.code = j["code"].get<bool>();
    }
  }
  e.ids = tok.encode(p.line > 0 ? std::string_view(text) : std::string_view(p.text), false);
  for (int32_t id : e.ids)
    MOE_CHECK(id != eos, "{}: the document contains the EOS token, which separates documents", p.where());
  e.ids.push_back(eos);
  return e;
}

// Pieces are tokenized in batches of about this many bytes: large enough to keep every thread busy, small enough
// that a batch's tokens stay a few times this in memory.
constexpr size_t kBatchBytes = size_t(8) << 20;
constexpr size_t kBatchPieces = 4096;

}  // namespace

// The inputs are read on this thread, cut into pieces (documents), and tokenized a batch at a time on the pool;
// each batch's results are then added in input order, so the shards, masks, manifest and split are the same
// bytes for any thread count, and the first bad piece in input order is the error reported.
CorpusStats tokenize_corpus(const std::vector<std::string>& files, const CorpusOptions& o) {
  MOE_CHECK(!files.empty(), "tokenize-corpus: no input files");
  MOE_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "tokenize-corpus: --val-fraction {} is not in [0, 1)",
            o.val_fraction);
  MOE_CHECK(o.shard_tokens > 0, "tokenize-corpus: --shard-tokens must be positive");
  MOE_CHECK(o.threads >= 0, "tokenize-corpus: --threads {} is negative", o.threads);
  MOE_CHECK(o.fim_rate >= 0 && o.fim_rate <= 1, "tokenize-corpus: --fim-rate {} is not in [0, 1]", o.fim_rate);
  MOE_CHECK(!(o.sft && o.fim_rate > 0), "tokenize-corpus: --fim-rate applies to pre-training text, not --sft data");
  const Tokenizer tok = Tokenizer::load(o.tokenizer_dir);
  MOE_CHECK(tok.eos_id().has_value(), "{}: the tokenizer has no EOS token (tokenizer_config.json eos_token)",
            o.tokenizer_dir);
  const int32_t eos = *tok.eos_id();
  const FimTokens fim = o.fim_rate > 0 ? FimTokens::from(tok, o.tokenizer_dir) : FimTokens{};
  ThreadPool pool(o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency())));
  const auto t0 = std::chrono::steady_clock::now();
  fs::create_directories(o.out_dir);
  ShardWriter w[2] = {{o.out_dir, "train", o.shard_tokens, {}, o.sft, {}, {}, 0},
                      {o.out_dir, "val", o.shard_tokens, {}, o.sft, {}, {}, 0}};
  CorpusStats st;
  st.threads = pool.size();
  int64_t d = 0;
  auto add_ids = [&](const std::vector<int32_t>& ids, const std::vector<uint8_t>* loss, bool code) {
    const int split = (int64_t(double(d + 1) * o.val_fraction) > int64_t(double(d) * o.val_fraction)) ? 1 : 0;
    const int64_t doc = d++;
    if (split == 0 && code) {
      st.code_documents++;
      const auto body = std::span<const int32_t>(ids).first(ids.size() - 1);  // without the EOS
      const FimDraw draw = fim_draw(o.fim_seed, doc, int64_t(body.size()), o.fim_rate);
      if (draw.apply) {
        std::vector<int32_t> psm = fim_apply(body, draw, fim);
        psm.push_back(eos);
        st.fim_documents++;
        w[split].add(psm, loss);
        st.documents[split]++;
        st.tokens[split] += int64_t(psm.size());
        return;
      }
    }
    w[split].add(ids, loss);
    st.documents[split]++;
    st.tokens[split] += int64_t(ids.size());
  };
  std::vector<Piece> batch;
  size_t batch_bytes = 0;
  auto run_batch = [&] {
    std::vector<Encoded> out(batch.size());
    pool.parallel_for(int64_t(batch.size()), [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) {
        try {
          out[i] = encode_piece(tok, eos, o.sft, batch[i]);
        } catch (...) {
          out[i].error = std::current_exception();
        }
      }
    });
    for (Encoded& e : out) {
      if (e.error) std::rethrow_exception(e.error);
      add_ids(e.ids, o.sft ? &e.loss : nullptr, e.code);
    }
    batch.clear();
    batch_bytes = 0;
  };
  auto push = [&](Piece p) {
    batch_bytes += p.text.size();
    batch.push_back(std::move(p));
    if (batch_bytes >= kBatchBytes || batch.size() >= kBatchPieces) run_batch();
  };
  for (const std::string& f : files) {
    const bool jsonl = f.size() >= 6 && f.substr(f.size() - 6) == ".jsonl";
    std::string text;
    try {
      MOE_CHECK(!o.sft || jsonl, "{}: --sft takes JSONL files of {{\"messages\": [...]}} conversations", f);
      text = read_file(f);
    } catch (...) {
      run_batch();  // an earlier piece's error comes first, as it would on one thread
      throw;
    }
    if (!jsonl) {
      push(Piece{std::move(text), f, 0});
      continue;
    }
    size_t at = 0;
    for (int64_t ln = 1; at < text.size(); ++ln) {
      size_t nl = text.find('\n', at);
      if (nl == std::string::npos) nl = text.size();
      std::string line = text.substr(at, nl - at);
      at = nl + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      push(Piece{std::move(line), f, ln});
    }
  }
  run_batch();
  for (int s = 0; s < 2; ++s) {
    w[s].flush();
    st.shards[s] = int64_t(w[s].shards.size());
  }
  MOE_CHECK(st.documents[0] > 0, "tokenize-corpus: no training documents in the input");
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(o.tokenizer_dir) / name;
    if (fs::exists(src)) fs::copy_file(src, fs::path(o.out_dir) / name, fs::copy_options::overwrite_existing);
  }
  nlohmann::ordered_json m;
  m["format"] = "moe-tokens-1";
  m["vocab_size"] = tok.vocab_size();
  m["eos_id"] = eos;
  m["tokenizer"] = o.tokenizer_dir;
  if (o.sft) m["sft"] = true;
  if (o.fim_rate > 0)
    m["fim"] = {{"rate", o.fim_rate}, {"seed", o.fim_seed}, {"code_documents", st.code_documents},
                {"fim_documents", st.fim_documents}};
  m["train"] = shards_json(w[0].shards, o.sft);
  m["val"] = shards_json(w[1].shards, o.sft);
  std::ofstream out(o.out_dir + "/manifest.json");
  out << m.dump(1) << "\n";
  MOE_CHECK(out.good(), "{}/manifest.json: error writing", o.out_dir);
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

Manifest Manifest::load(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  std::ifstream in(path);
  MOE_CHECK(in.good(), "{}: cannot open (is {} a tokenize-corpus output?)", path, dir);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  // (compared as JSON values: json::value("format", "") throws its own type_error on {"format": []})
  MOE_CHECK(j.is_object() && j.contains("format") && j["format"] == "moe-tokens-1",
            "{}: not a moe-tokens-1 manifest (format must be \"moe-tokens-1\")", path);
  MOE_CHECK(j.contains("vocab_size") && j["vocab_size"].is_number_integer(), "{}: vocab_size is missing", path);
  MOE_CHECK(j.contains("eos_id") && j["eos_id"].is_number_integer(), "{}: eos_id is missing", path);
  Manifest m;
  m.dir = dir;
  m.vocab_size = j["vocab_size"].get<int64_t>();
  m.eos_id = j["eos_id"].get<int32_t>();
  MOE_CHECK(!j.contains("sft") || j["sft"].is_boolean(), "{}: sft is not true or false", path);
  m.sft = j.value("sft", false);
  for (const char* split : {"train", "val"}) {
    MOE_CHECK(j.contains(split) && j[split].is_array(), "{}: {} is not a list of shards", path, split);
    auto& list = std::string(split) == "train" ? m.train : m.val;
    for (size_t i = 0; i < j[split].size(); ++i) {
      const auto& s = j[split][i];
      const bool ok = s.is_object() && s.contains("file") && s["file"].is_string() && s.contains("tokens") &&
                      s["tokens"].is_number_integer() && s.contains("documents") &&
                      s["documents"].is_number_integer() && s.contains("fnv1a64") && s["fnv1a64"].is_string();
      MOE_CHECK(ok, "{}: {}[{}] needs file, tokens, documents and fnv1a64", path, split, i);
      ShardInfo info;
      info.file = s["file"].get<std::string>();
      MOE_CHECK(info.file.find('/') == std::string::npos, "{}: {}[{}].file must be a name in {}", path, split, i, dir);
      info.tokens = s["tokens"].get<int64_t>();
      info.documents = s["documents"].get<int64_t>();
      try {
        info.checksum = std::stoull(s["fnv1a64"].get<std::string>(), nullptr, 16);
      } catch (const std::exception&) {
        fail("{}: {}[{}].fnv1a64 is not hexadecimal", path, split, i);
      }
      if (m.sft) {
        MOE_CHECK(s.contains("mask_fnv1a64") && s["mask_fnv1a64"].is_string(), "{}: {}[{}] needs mask_fnv1a64 (sft)",
                  path, split, i);
        try {
          info.mask_checksum = std::stoull(s["mask_fnv1a64"].get<std::string>(), nullptr, 16);
        } catch (const std::exception&) {
          fail("{}: {}[{}].mask_fnv1a64 is not hexadecimal", path, split, i);
        }
      }
      list.push_back(info);
    }
  }
  MOE_CHECK(!m.train.empty(), "{}: no training shards", path);
  return m;
}

namespace {

// An SFT shard's mask file, checked against the shard and the manifest (names the file on any disagreement).
std::vector<uint8_t> read_mask(const std::string& path, uint64_t tokens, uint64_t checksum, const std::string& dir) {
  MOE_CHECK(fs::exists(path), "{}: missing (the mask of an SFT shard listed in {}/manifest.json)", path, dir);
  const std::string bytes = read_file(path);
  MOE_CHECK(bytes.size() >= size_t(kHeader) && std::memcmp(bytes.data(), kMaskMagic, 8) == 0,
            "{}: not a loss-mask file (bad magic)", path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data() + 8, 8);
  MOE_CHECK(bytes.size() == size_t(kHeader) + n, "{}: corrupt: {} bytes, but its header says {} tokens", path,
            bytes.size(), n);
  MOE_CHECK(n == tokens, "{}: holds {} mask bytes but its shard has {} tokens", path, n, tokens);
  const uint64_t sum = fnv1a64(bytes.data() + kHeader, n);
  MOE_CHECK(sum == checksum, "{}: checksum {} disagrees with {}/manifest.json ({}): the mask is corrupt", path,
            hex64(sum), dir, hex64(checksum));
  std::vector<uint8_t> mask(n);
  std::memcpy(mask.data(), bytes.data() + kHeader, n);
  for (uint64_t i = 0; i < n; ++i) MOE_CHECK(mask[i] <= (kLoss | kDocStart), "{}: byte {} = {} is not a mask", path, i, mask[i]);
  MOE_CHECK(n == 0 || (mask[0] & kDocStart), "{}: corrupt: the first token does not start a document", path);
  return mask;
}

}  // namespace

std::vector<std::vector<int32_t>> Manifest::read_split(const std::string& split,
                                                       std::vector<std::vector<uint8_t>>* masks) const {
  const auto& list = split == "val" ? val : train;
  std::vector<std::vector<int32_t>> docs;
  for (const ShardInfo& s : list) {
    const std::string path = dir + "/" + s.file;
    MOE_CHECK(fs::exists(path), "{}: missing (listed in {}/manifest.json)", path, dir);
    const std::string bytes = read_file(path);
    MOE_CHECK(bytes.size() >= size_t(kHeader) && std::memcmp(bytes.data(), kMagic, 8) == 0,
              "{}: not a token shard (bad magic)", path);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data() + 8, 8);
    MOE_CHECK(bytes.size() == size_t(kHeader) + n * 4, "{}: corrupt: {} bytes, but its header says {} tokens", path,
              bytes.size(), n);
    MOE_CHECK(int64_t(n) == s.tokens, "{}: holds {} tokens but {}/manifest.json says {}", path, n, dir, s.tokens);
    const uint64_t sum = fnv1a64(bytes.data() + kHeader, n * 4);
    MOE_CHECK(sum == s.checksum, "{}: checksum {} disagrees with {}/manifest.json ({}): the shard is corrupt", path,
              hex64(sum), dir, hex64(s.checksum));
    std::vector<int32_t> ids(n);
    std::memcpy(ids.data(), bytes.data() + kHeader, n * 4);
    int64_t count = 0;
    if (sft) {
      const std::vector<uint8_t> mask = read_mask(path + ".mask", n, s.mask_checksum, dir);
      for (uint64_t i = 0; i < n; ++i) {
        MOE_CHECK(ids[i] >= 0 && ids[i] < vocab_size, "{}: token {} = {} is outside the vocabulary ({})", path, i,
                  ids[i], vocab_size);
        if (mask[i] & kDocStart) {
          docs.emplace_back();
          if (masks) masks->emplace_back();
          ++count;
        }
        docs.back().push_back(ids[i]);
        if (masks) masks->back().push_back(mask[i] & kLoss);
      }
      MOE_CHECK(count == s.documents, "{}: holds {} documents but {}/manifest.json says {}", path, count, dir,
                s.documents);
      continue;
    }
    std::vector<int32_t> doc;
    for (uint64_t i = 0; i < n; ++i) {
      MOE_CHECK(ids[i] >= 0 && ids[i] < vocab_size, "{}: token {} = {} is outside the vocabulary ({})", path, i, ids[i],
                vocab_size);
      doc.push_back(ids[i]);
      if (ids[i] == eos_id) {
        docs.push_back(std::move(doc));
        doc.clear();
        ++count;
      }
    }
    MOE_CHECK(doc.empty(), "{}: corrupt: the last document has no EOS", path);
    MOE_CHECK(count == s.documents, "{}: holds {} documents but {}/manifest.json says {}", path, count, dir,
              s.documents);
  }
  return docs;
}

PackedLoader::PackedLoader(std::vector<std::vector<int32_t>> docs, uint64_t seed, bool shuffle, Position at)
    : docs_(std::move(docs)), seed_(seed), shuffle_(shuffle), pos_(at) {
  MOE_CHECK(!docs_.empty(), "loader: no documents");
  for (const auto& d : docs_) total_ += int64_t(d.size());
  MOE_CHECK(pos_.epoch >= 0 && pos_.doc >= 0 && pos_.doc < int64_t(docs_.size()) && pos_.offset >= 0,
            "loader: position (epoch {}, document {}) is outside the data", pos_.epoch, pos_.doc);
  make_order();
  MOE_CHECK(pos_.offset < int64_t(docs_[size_t(order_[size_t(pos_.doc)])].size()),
            "loader: position offset {} is outside document {}", pos_.offset, pos_.doc);
}

void PackedLoader::make_order() {
  order_.resize(docs_.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = int64_t(i);
  if (!shuffle_) return;
  // splitmix64 over (seed, epoch): the same order on every platform.
  uint64_t state = seed_ * 0x9e3779b97f4a7c15ull + uint64_t(pos_.epoch) + 1;
  auto next = [&] {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[size_t(next() % i)]);
}

void PackedLoader::set_masks(std::vector<std::vector<uint8_t>> masks) {
  MOE_CHECK(masks.size() == docs_.size(), "loader: {} masks for {} documents", masks.size(), docs_.size());
  for (size_t i = 0; i < masks.size(); ++i)
    MOE_CHECK(masks[i].size() == docs_[i].size(), "loader: document {}'s mask has the wrong length", i);
  masks_ = std::move(masks);
}

std::vector<int32_t> PackedLoader::next(int64_t b, int64_t t, std::vector<uint8_t>* mask) {
  std::vector<int32_t> out;
  out.reserve(size_t(b * t));
  if (mask) mask->clear();
  MOE_CHECK(!mask || !masks_.empty(), "loader: a loss mask was asked for, but the data has none");
  while (int64_t(out.size()) < b * t) {
    const size_t d = size_t(order_[size_t(pos_.doc)]);
    const auto& doc = docs_[d];
    const int64_t take = std::min<int64_t>(int64_t(doc.size()) - pos_.offset, b * t - int64_t(out.size()));
    out.insert(out.end(), doc.begin() + pos_.offset, doc.begin() + pos_.offset + take);
    if (mask) mask->insert(mask->end(), masks_[d].begin() + pos_.offset, masks_[d].begin() + pos_.offset + take);
    pos_.offset += take;
    if (pos_.offset == int64_t(doc.size())) {
      pos_.offset = 0;
      if (++pos_.doc == int64_t(docs_.size())) {
        pos_.doc = 0;
        ++pos_.epoch;
        make_order();
      }
    }
  }
  return out;
}

}  // namespace moe::train
