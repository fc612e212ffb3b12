// The byte matcher's transitions, one JSON value kind at a time. Phases per kind:
//   object   0 '{'  1 after '{': '"' or '}'  2 in a key  3 ':'  4 in a value  5 ',' or '}'  6 after ',': '"'
//   array    0 '['  1 after '[': ']' or an item  2 ',' or ']'  3 after ',': an item
//   string   0 '"'  1 inside  2 after '\'  3 in a UTF-8 sequence  4 in \uXXXX
//   integer  0 start  1 after '-'  2 digits (may end)
//   number   0 start  1 after '-'  2 integer digits  3 after a leading 0  4 after '.'  5 fraction digits
//            6 after 'e'  7 after the exponent's sign  8 exponent digits, at most two (2, 3, 5, 8 may end)
//            bounded (number_bounds.h): phases 0-5 as DecimalPrefix, flags negative, bits the digits, count the
//            significant digits, aux the decimals
//   literals 0 walking the trie (aux: the node)
#include "engine/grammar/matcher.h"

#include <algorithm>

#include "core/error.h"

namespace moe::grammar {

namespace {

bool is_digit(uint8_t b) { return b >= '0' && b <= '9'; }
int hex_value(uint8_t b) {
  if (is_digit(b)) return b - '0';
  if (b >= 'a' && b <= 'f') return b - 'a' + 10;
  if (b >= 'A' && b <= 'F') return b - 'A' + 10;
  return -1;
}

constexpr uint64_t kPow10[19] = {1ull,
                                 10ull,
                                 100ull,
                                 1000ull,
                                 10000ull,
                                 100000ull,
                                 1000000ull,
                                 10000000ull,
                                 100000000ull,
                                 1000000000ull,
                                 10000000000ull,
                                 100000000000ull,
                                 1000000000000ull,
                                 10000000000000ull,
                                 100000000000000ull,
                                 1000000000000000ull,
                                 10000000000000000ull,
                                 100000000000000000ull,
                                 1000000000000000000ull};

// Whether some integer written as this prefix and more digits (or nothing more) lies in [min, max].
bool integer_feasible(const Node& n, bool negative, uint64_t magnitude, uint32_t digits) {
  for (uint32_t k = 0; digits + k <= uint32_t(kMaxIntegerDigits); ++k) {
    const uint64_t lo = magnitude * kPow10[k], hi = lo + kPow10[k] - 1;
    if (lo > 999'999'999'999'999'999ull) break;
    int64_t a = int64_t(lo), b = int64_t(std::min<uint64_t>(hi, 999'999'999'999'999'999ull));
    if (negative) std::tie(a, b) = std::pair(-b, -a);
    if (std::max(a, n.min) <= std::min(b, n.max)) return true;
    if (magnitude == 0) break;  // "0" takes no more digits
  }
  return false;
}

DecimalPrefix decimal_prefix(const Frame& f) {
  return DecimalPrefix{f.phase, f.flags != 0, f.bits, f.count, uint32_t(f.aux)};
}

bool integer_value_ok(const Node& n, bool negative, uint64_t magnitude) {
  const int64_t v = negative ? -int64_t(magnitude) : int64_t(magnitude);
  return v >= n.min && v <= n.max;
}

}  // namespace

// Steps one thread by one byte, writing every resulting thread into `out`.
class Matcher::Run {
 public:
  Run(const Matcher& m, State& out, std::vector<Frame>& stack) : m_(m), out_(out), st_(stack) {}

  void thread(const State& in, const Thread& t, uint8_t b) {
    piece_ = t.piece;
    if (piece_ >= m_.pieces_.size()) return;
    const Piece& p = m_.pieces_[piece_];
    if (p.type == Piece::Type::token) return;
    if (p.type == Piece::Type::text) {
      if (uint8_t(p.text[t.off]) != b) return;
      if (t.off + 1 == p.text.size()) {
        add(piece_ + 1, 0, nullptr, 0);
      } else {
        add(piece_, t.off + 1, nullptr, 0);
      }
      return;
    }
    g_ = &p.schema->grammar();
    st_.assign(in.frames.begin() + t.begin, in.frames.begin() + t.begin + t.size);
    if (t.off == 0) {
      start_value(g_->root, b);
    } else {
      feed(b);
    }
  }

 private:
  const Node& node(const Frame& f) const { return g_->nodes[size_t(f.node)]; }

  // Adds a thread to out_ unless an equal one is there.
  void add(uint32_t piece, uint32_t off, const Frame* frames, uint32_t n) {
    for (const Thread& t : out_.threads)
      if (t.piece == piece && t.off == off && t.size == n &&
          std::equal(frames, frames + n, out_.frames.begin() + t.begin))
        return;
    out_.threads.push_back(Thread{piece, off, uint32_t(out_.frames.size()), n});
    out_.frames.insert(out_.frames.end(), frames, frames + n);
  }

  // The current stack is a result: record it, and (closure) the stack where its top value ends here.
  void emit() {
    if (st_.empty()) {
      add(piece_ + 1, 0, nullptr, 0);
      return;
    }
    add(piece_, 1, st_.data(), uint32_t(st_.size()));
    if (may_end(st_.back())) {
      const Frame top = st_.back();
      const size_t depth = st_.size();
      const Frame parent = depth > 1 ? st_[depth - 2] : Frame{};
      st_.pop_back();
      child_done();
      if (st_.empty()) {
        add(piece_ + 1, 0, nullptr, 0);
      } else {
        add(piece_, 1, st_.data(), uint32_t(st_.size()));
        st_.back() = parent;
      }
      st_.push_back(top);
    }
  }

  // A value that is complete but could also go on.
  bool may_end(const Frame& f) const {
    const Node& n = node(f);
    switch (n.kind) {
      case Kind::integer:
        return f.phase == 2 && integer_value_ok(n, f.flags, f.bits);
      case Kind::number:
        if (n.bounded) return number_complete(decimal_prefix(f), n.num_lo, n.num_hi);
        return f.phase == 2 || f.phase == 3 || f.phase == 5 || f.phase == 8;
      case Kind::literals:
        return n.trie.nodes[size_t(f.aux)].value >= 0;
      default:
        return false;
    }
  }

  // The top value ended and was popped: tell its parent.
  void child_done() {
    if (st_.empty()) return;
    Frame& p = st_.back();
    if (node(p).kind == Kind::object) {
      if (p.phase == 2) {  // a free key
        p.phase = 3;
        p.aux = -1;
      } else {  // a value
        if (p.aux >= 0) p.bits |= uint64_t(1) << p.aux;
        p.phase = 5;
      }
    } else {  // array
      p.count++;
      p.phase = 2;
    }
  }

  // Pops the top value, which has ended, and emits.
  void finish() {
    st_.pop_back();
    child_done();
    emit();
  }

  // Begins a value of node `id` whose first byte is b. any_of and ref fork here, over their flattened
  // alternatives (schema.cpp: all concrete nodes).
  void start_value(int32_t id, uint8_t b) {
    const Node& n = g_->nodes[size_t(id)];
    if (n.kind == Kind::ref || n.kind == Kind::any_of) {
      const size_t depth = st_.size();
      const Frame parent = depth ? st_.back() : Frame{};
      for (int32_t alt : n.alts) {
        start_value(alt, b);
        st_.resize(depth);
        if (depth) st_.back() = parent;
      }
      return;
    }
    if (st_.size() + n.height > m_.max_depth_) return;  // no value of it would fit (or none exists)
    Frame f;
    f.node = id;
    st_.push_back(f);
    feed(b);
  }

  void feed(uint8_t b) {
    Frame& f = st_.back();
    const Node& n = node(f);
    switch (n.kind) {
      case Kind::object: return object(f, n, b);
      case Kind::array: return array(f, n, b);
      case Kind::string: return string(f, n, b);
      case Kind::integer: return integer(f, n, b);
      case Kind::number: return n.bounded ? bounded_number(f, n, b) : number(f, b);
      case Kind::literals: return literal(f, n, b);
      default: return;
    }
  }

  // Whether a value of node `id` started now, above the top frame, could be finished within the depth bound.
  bool fits(int32_t id) const { return st_.size() + g_->nodes[size_t(id)].height <= m_.max_depth_; }

  // The declared properties whose values still fit.
  uint64_t fitting(const Node& n) const {
    uint64_t m = 0;
    for (size_t i = 0; i < n.prop_nodes.size(); ++i)
      if (fits(n.prop_nodes[i])) m |= uint64_t(1) << i;
    return m;
  }

  void start_key(Frame& f, const Node& n) {
    f.phase = 2;
    if (n.additional >= 0) {
      if (st_.size() >= m_.max_depth_) return;
      Frame key;
      key.node = g_->key_string;
      key.phase = 1;
      st_.push_back(key);
    } else {
      f.aux = 0;
    }
    emit();
  }

  void object(Frame& f, const Node& n, uint8_t b) {
    // Keys may follow where an unwritten property's value (or a free key's) still fits in the depth bound;
    // required ones always do (the object's height counted them).
    const bool structural = f.phase == 1 || f.phase == 5;
    const uint64_t open = structural || f.phase == 2 ? fitting(n) & ~f.bits : 0;
    const bool more_keys = (n.additional >= 0 && fits(n.additional) && st_.size() < m_.max_depth_) || open != 0;
    switch (f.phase) {
      case 0:
        if (b == '{') {
          f.phase = 1;
          emit();
        }
        return;
      case 1:
      case 5:
        if (b == '}' && (n.required & ~f.bits) == 0) return finish();
        if (f.phase == 1 && b == '"' && more_keys) return start_key(f, n);
        if (f.phase == 5 && b == ',' && more_keys) {
          f.phase = 6;
          emit();
        }
        return;
      case 6:
        if (b == '"') start_key(f, n);
        return;
      case 2: {  // a declared key (free keys are a string frame above this one)
        const int32_t c = n.trie.child(f.aux, b);
        if (c < 0 || (n.trie.nodes[size_t(c)].below & open) == 0) return;
        const int32_t prop = n.trie.nodes[size_t(c)].value;
        if (prop >= 0) {
          f.aux = prop;
          f.phase = 3;
        } else {
          f.aux = c;
        }
        emit();
        return;
      }
      case 3:
        if (b == ':') {
          f.phase = 4;
          emit();
        }
        return;
      case 4: {
        const int32_t child = f.aux >= 0 ? n.prop_nodes[size_t(f.aux)] : n.additional;
        start_value(child, b);
        return;
      }
      default:
        return;
    }
  }

  void array(Frame& f, const Node& n, uint8_t b) {
    switch (f.phase) {
      case 0:
        if (b == '[') {
          f.phase = 1;
          emit();
        }
        return;
      case 1:
      case 2:
        if (b == ']' && f.count >= n.min_items) return finish();
        if (f.phase == 2) {
          if (b == ',' && f.count < n.max_items && fits(n.items)) {
            f.phase = 3;
            emit();
          }
          return;
        }
        if (n.max_items > 0) start_value(n.items, b);
        return;
      case 3:
        start_value(n.items, b);
        return;
      default:
        return;
    }
  }

  void string(Frame& f, const Node& n, uint8_t b) {
    switch (f.phase) {
      case 0:
        if (b == '"') {
          f.phase = 1;
          emit();
        }
        return;
      case 1:
        if (b == '"') {
          if (f.count >= n.min_len) finish();
          return;
        }
        if (b < 0x20 || f.count >= n.max_len) return;
        if (b == '\\') {
          f.phase = 2;
        } else if (b < 0x80) {
          f.count++;
        } else {
          // Well-formed UTF-8 only (no overlong forms, surrogates or code points past U+10FFFF).
          if (b >= 0xC2 && b <= 0xDF) f.need = 1, f.lo = 0x80, f.hi = 0xBF;
          else if (b == 0xE0) f.need = 2, f.lo = 0xA0, f.hi = 0xBF;
          else if (b == 0xED) f.need = 2, f.lo = 0x80, f.hi = 0x9F;
          else if (b >= 0xE1 && b <= 0xEF) f.need = 2, f.lo = 0x80, f.hi = 0xBF;
          else if (b == 0xF0) f.need = 3, f.lo = 0x90, f.hi = 0xBF;
          else if (b >= 0xF1 && b <= 0xF3) f.need = 3, f.lo = 0x80, f.hi = 0xBF;
          else if (b == 0xF4) f.need = 3, f.lo = 0x80, f.hi = 0x8F;
          else return;
          f.count++;
          f.phase = 3;
        }
        emit();
        return;
      case 3:
        if (b < f.lo || b > f.hi) return;
        f.lo = 0x80;
        f.hi = 0xBF;
        if (--f.need == 0) {
          f.phase = 1;
          f.lo = f.hi = 0;
        }
        emit();
        return;
      case 2:
        if (b == 'u') {
          f.phase = 4;
          f.aux = 0;
          emit();
        } else if (b == '"' || b == '\\' || b == '/' || b == 'b' || b == 'f' || b == 'n' || b == 'r' || b == 't') {
          f.count++;
          f.phase = 1;
          emit();
        }
        return;
      case 4: {
        const int v = hex_value(b);
        if (v < 0) return;
        if (f.aux == 0 && v == 0xD) f.flags = 1;
        if (f.aux == 1 && f.flags == 1 && v >= 8) return;  // \uD800-\uDFFF: surrogates are not generated
        if (++f.aux == 4) {
          f.count++;
          f.phase = 1;
          f.aux = 0;
          f.flags = 0;
        }
        emit();
        return;
      }
      default:
        return;
    }
  }

  void integer(Frame& f, const Node& n, uint8_t b) {
    switch (f.phase) {
      case 0:
        if (b == '-') {
          if (n.min > -1) return;  // no negative integer allowed ("-0" is not generated)
          f.flags = 1;
          f.phase = 1;
          emit();
          return;
        }
        if (b == '0') {
          if (integer_value_ok(n, false, 0)) finish();
          return;
        }
        [[fallthrough]];
      case 1:
      case 2:
        if (!is_digit(b) || (f.phase != 2 && b == '0') || f.count >= uint32_t(kMaxIntegerDigits)) return;
        if (!integer_feasible(n, f.flags, f.bits * 10 + (b - '0'), f.count + 1)) return;
        f.bits = f.bits * 10 + (b - '0');
        f.count++;
        f.phase = 2;
        emit();
        return;
      default:
        return;
    }
  }

  void number(Frame& f, uint8_t b) {
    if (f.count >= kMaxNumberBytes) return;
    uint8_t next = 255;
    switch (f.phase) {
      case 0:
        next = b == '-' ? 1 : b == '0' ? 3 : is_digit(b) ? 2 : 255;
        break;
      case 1:
        next = b == '0' ? 3 : is_digit(b) ? 2 : 255;
        break;
      case 2:
      case 3:
        next = f.phase == 2 && is_digit(b) ? 2 : b == '.' ? 4 : (b == 'e' || b == 'E') ? 6 : 255;
        break;
      case 4:
      case 5:
        next = is_digit(b) ? 5 : (f.phase == 5 && (b == 'e' || b == 'E')) ? 6 : 255;
        break;
      case 6:
        next = (b == '+' || b == '-') ? 7 : is_digit(b) ? 8 : 255;
        break;
      case 7:
      case 8:
        next = is_digit(b) && (f.phase == 7 || f.aux < 2) ? 8 : 255;  // two exponent digits: doubles never overflow
        break;
      default:
        break;
    }
    if (next == 255) return;
    // A phase that cannot end needs room for one more byte, so that the number can always be finished.
    if ((next == 1 || next == 4 || next == 6 || next == 7) && f.count + 2 > kMaxNumberBytes) return;
    if (next == 8) f.aux = f.phase == 8 ? f.aux + 1 : 1;
    f.phase = next;
    f.count++;
    emit();
  }

  // A number within bounds: the byte must keep some completion within them (number_bounds.h).
  void bounded_number(Frame& f, const Node& n, uint8_t b) {
    DecimalPrefix p = decimal_prefix(f);
    if (!number_step(p, b) || !number_feasible(p, n.num_lo, n.num_hi)) return;
    f.phase = p.phase;
    f.flags = p.negative ? 1 : 0;
    f.bits = p.digits;
    f.count = p.significant;
    f.aux = int32_t(p.decimals);
    emit();
  }

  void literal(Frame& f, const Node& n, uint8_t b) {
    const int32_t c = n.trie.child(f.aux, b);
    if (c < 0) return;
    f.aux = c;
    if (n.trie.nodes[size_t(c)].children.empty()) return finish();
    emit();  // may_end covers a literal that is also a prefix of another
  }

  const Matcher& m_;
  State& out_;
  std::vector<Frame>& st_;
  const Grammar* g_ = nullptr;
  uint32_t piece_ = 0;
};

Matcher::Matcher(std::vector<Piece> pieces, uint32_t max_depth) : max_depth_(max_depth) {
  for (auto& p : pieces) {
    if (p.type == Piece::Type::text && p.text.empty()) continue;
    if (p.type == Piece::Type::text && !pieces_.empty() && pieces_.back().type == Piece::Type::text) {
      pieces_.back().text += p.text;
      continue;
    }
    MOE_CHECK(p.type != Piece::Type::json || p.schema, "a JSON piece of an output constraint has no schema");
    MOE_CHECK(p.type != Piece::Type::token || p.token >= 0, "a token piece of an output constraint has no id");
    pieces_.push_back(std::move(p));
  }
}

State Matcher::initial() const {
  State s;
  s.threads.push_back(Thread{});
  return s;
}

bool Matcher::step(const State& in, uint8_t byte, State& out) const {
  out.clear();
  Run run(*this, out, out.work);
  for (const Thread& t : in.threads) run.thread(in, t, byte);
  return !out.threads.empty();
}

bool Matcher::step_bytes(State& s, std::string_view bytes) const {
  State next;
  for (char c : bytes) {
    if (!step(s, uint8_t(c), next)) return false;
    std::swap(s, next);
  }
  return true;
}

bool Matcher::step_token(const State& in, int32_t id, State& out) const {
  out.clear();
  for (const Thread& t : in.threads)
    if (t.piece < pieces_.size() && pieces_[t.piece].type == Piece::Type::token && pieces_[t.piece].token == id) {
      const bool dup = std::any_of(out.threads.begin(), out.threads.end(),
                                   [&](const Thread& o) { return o.piece == t.piece + 1; });
      if (!dup) out.threads.push_back(Thread{t.piece + 1, 0, 0, 0});
    }
  return !out.threads.empty();
}

bool Matcher::can_end(const State& s) const {
  return std::any_of(s.threads.begin(), s.threads.end(), [&](const Thread& t) { return t.piece == pieces_.size(); });
}

bool Matcher::must_end(const State& s) const {
  return !s.threads.empty() &&
         std::all_of(s.threads.begin(), s.threads.end(), [&](const Thread& t) { return t.piece == pieces_.size(); });
}

void Matcher::expected_tokens(const State& s, std::vector<int32_t>& out) const {
  for (const Thread& t : s.threads)
    if (t.piece < pieces_.size() && pieces_[t.piece].type == Piece::Type::token) out.push_back(pieces_[t.piece].token);
}

bool Matcher::in_plain_string(const State& s, const Thread& t, uint32_t& room) const {
  if (t.piece >= pieces_.size() || pieces_[t.piece].type != Piece::Type::json || t.size == 0) return false;
  const Frame& f = s.frames[t.begin + t.size - 1];
  const Node& n = pieces_[t.piece].schema->grammar().nodes[size_t(f.node)];
  if (n.kind != Kind::string || f.phase != 1) return false;
  room = n.max_len - f.count;
  return true;
}

}  // namespace moe::grammar
