#include "tokenizer/tiktoken.h"

#include <algorithm>
#include <charconv>
#include <limits>
#include <queue>

#include "core/error.h"

namespace moe::tok {

namespace {

// Standard base64 (RFC 4648, '=' padding required to a multiple of 4), as Python's base64.b64decode reads a line of
// tiktoken.model. Returns false for any other character or a bad length.
bool base64_decode(std::string_view in, std::string& out) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (in.empty() || in.size() % 4 != 0) return false;
  out.clear();
  for (size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    const int pad = last ? (in[i + 3] == '=') + (in[i + 2] == '=') : 0;
    if (pad == 1 && in[i + 2] == '=') return false;  // "x=y=" is not padding
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const int d = k >= 4 - pad ? 0 : value(in[i + size_t(k)]);
      if (d < 0) return false;
      v = v << 6 | uint32_t(d);
    }
    out += char(v >> 16);
    if (pad < 2) out += char(v >> 8 & 0xff);
    if (pad < 1) out += char(v & 0xff);
  }
  return true;
}

class RawBytesDecoder : public Decoder {
 public:
  void decode(std::vector<std::string>&, bool) const override {}
};

}  // namespace

Tiktoken::Tiktoken(std::string_view text, const std::string& source) {
  // Ranks are ids and must run 0..N-1 over the N tokens: anything past the line count is refused before it can
  // size a table (a rank of 2^31 must not allocate its way there).
  size_t count = 0;
  for (size_t at = 0; at < text.size();) {
    const size_t nl = std::min(text.find('\n', at), text.size());
    const std::string_view line = text.substr(at, nl - at);
    if (!line.empty() && line != "\r") ++count;
    at = nl + 1;
  }
  std::vector<size_t> lines(count, 0);  // rank -> its line number (0: not seen yet), to name a duplicate's first line
  tokens_.resize(count);
  size_t line_no = 0;
  std::string bytes;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos)
      fail("{} line {}: expected 'base64-token rank', found no space", source, line_no);
    const std::string_view b64 = line.substr(0, sp), num = line.substr(sp + 1);
    if (!base64_decode(b64, bytes)) fail("{} line {}: '{}' is not valid base64", source, line_no, b64.substr(0, 64));
    int64_t rank = -1;
    const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), rank);
    if (ec != std::errc() || end != num.data() + num.size() || rank < 0 || rank > std::numeric_limits<int32_t>::max())
      fail("{} line {}: rank '{}' is not a non-negative integer", source, line_no, num.substr(0, 32));
    if (size_t(rank) >= count)
      fail("{} line {}: rank {} is past the last id: the {} tokens must have the ranks 0 to {} (the special tokens "
           "follow them)", source, line_no, rank, count, count - 1);
    if (lines[size_t(rank)])
      fail("{} line {}: duplicate rank {} (first on line {})", source, line_no, rank, lines[size_t(rank)]);
    if (!ranks_.emplace(bytes, int32_t(rank)).second)
      fail("{} line {}: duplicate token (base64 '{}'), first with rank {}", source, line_no, b64.substr(0, 64),
           ranks_.find(bytes)->second);
    tokens_[size_t(rank)] = bytes;
    lines[size_t(rank)] = line_no;
  }
  if (ranks_.empty()) fail("{}: no tokens", source);
  // count distinct ranks, each below count: all of 0..count-1 are taken.
  for (int b = 0; b < 256; ++b)
    if (rank(std::string(1, char(b))) < 0) fail("{}: the single byte 0x{:02x} has no token", source, b);
}

int32_t Tiktoken::rank(std::string_view bytes) const {
  auto it = ranks_.find(bytes);
  return it == ranks_.end() ? -1 : it->second;
}

void Tiktoken::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (const int32_t whole = rank(word); whole >= 0) {  // tiktoken takes a pre-token that is a token as it is
    out.push_back(whole);
    return;
  }
  // The parts form a linked list over the bytes; a min-heap holds each adjacent pair that is a token, by (rank,
  // start): its top is the lowest rank, the leftmost among equals, as tiktoken's scan picks. Entries that a merge made
  // stale are skipped when popped. O(n log n), so a long run of one character (a whitespace run is one pre-token)
  // does not take quadratic time.
  struct Part {
    size_t start;
    int64_t prev, next;  // -1 at the ends
    bool alive;
  };
  std::vector<Part> parts(word.size());
  for (size_t i = 0; i < word.size(); ++i) parts[i] = {i, int64_t(i) - 1, i + 1 < word.size() ? int64_t(i + 1) : -1, true};
  auto end_of = [&](int64_t p) { return parts[size_t(p)].next < 0 ? word.size() : parts[size_t(parts[size_t(p)].next)].start; };
  struct Pair {
    int32_t rank;
    size_t start, end;  // the joined bytes, to recognise a stale entry
    int64_t left;
    bool operator>(const Pair& o) const { return rank != o.rank ? rank > o.rank : start > o.start; }
  };
  std::priority_queue<Pair, std::vector<Pair>, std::greater<Pair>> heap;
  auto push = [&](int64_t left) {
    if (left < 0 || parts[size_t(left)].next < 0) return;
    const size_t a = parts[size_t(left)].start, b = end_of(parts[size_t(left)].next);
    if (const int32_t r = rank(word.substr(a, b - a)); r >= 0) heap.push({r, a, b, left});
  };
  for (size_t i = 0; i + 1 < word.size(); ++i) push(int64_t(i));
  while (!heap.empty()) {
    const Pair top = heap.top();
    heap.pop();
    Part& left = parts[size_t(top.left)];
    if (!left.alive || left.next < 0 || left.start != top.start || end_of(left.next) != top.end) continue;  // stale
    Part& right = parts[size_t(left.next)];
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) parts[size_t(right.next)].prev = top.left;
    push(left.prev);
    push(top.left);
  }
  for (int64_t p = 0; p >= 0; p = parts[size_t(p)].next)
    out.push_back(rank(word.substr(parts[size_t(p)].start, end_of(p) - parts[size_t(p)].start)));
}

int32_t Tiktoken::token_id(std::string_view token) const { return rank(token); }

const std::string* Tiktoken::token(int32_t id) const {
  return id >= 0 && size_t(id) < tokens_.size() ? &tokens_[size_t(id)] : nullptr;
}

std::string kimi_pattern() {
  const std::string upper = R"((?:(?!\p{Han})[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]))";
  const std::string lower = R"((?:(?!\p{Han})[\p{Ll}\p{Lm}\p{Lo}\p{M}]))";
  const std::string contractions = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)?)";
  return std::string(R"([\p{Han}]+)") + "|" +                                              //
         R"([^\r\n\p{L}\p{N}]?)" + upper + "*" + lower + "+" + contractions + "|" +       //
         R"([^\r\n\p{L}\p{N}]?)" + upper + "+" + lower + "*" + contractions + "|" +       //
         R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

std::unique_ptr<Decoder> make_raw_bytes_decoder() { return std::make_unique<RawBytesDecoder>(); }

}  // namespace moe::tok
