#pragma once
// A byte-level matcher for a sequence of pieces: fixed token ids (special tokens, matched by id), fixed bytes,
// and JSON values of compiled schemas (schema.h). It is a pushdown automaton run nondeterministically: a State
// is a set of threads (anyOf branches, a number that may end or go on), each a position in the piece sequence
// and a stack of frames, one per open JSON value. Threads are kept closed under "this value may end here", so a
// byte is simply offered to every thread; threads that cannot take it die.
//
// Every thread can still be completed (no dead ends are entered), except where the stack depth bound cuts off
// a schema that demands deeper nesting.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/grammar/schema.h"

namespace moe::grammar {

struct Piece {
  enum class Type : uint8_t { token, text, json };
  Type type = Type::text;
  int32_t token = -1;  // token: this id, exactly (a special token; text cannot produce it)
  std::string text;    // text: these bytes, in whatever tokens
  std::shared_ptr<const Schema> schema;  // json: one value of this schema

  static Piece token_id(int32_t id) { return Piece{Type::token, id, {}, nullptr}; }
  static Piece bytes(std::string s) { return Piece{Type::text, -1, std::move(s), nullptr}; }
  static Piece value(Schema s) { return Piece{Type::json, -1, {}, std::make_shared<const Schema>(std::move(s))}; }
};

// One open JSON value. Field use depends on the node's kind (matcher.cpp); unused fields stay 0 so that equal
// positions compare equal.
struct Frame {
  int32_t node = 0;
  uint8_t phase = 0;
  uint8_t flags = 0;  // integer: negative; string \u escape: started with D
  uint8_t need = 0;   // string: UTF-8 continuation bytes still due
  uint8_t lo = 0, hi = 0;  // string: range of the next continuation byte
  int32_t aux = 0;    // object: key trie node, then property index (-1: free key); literals: trie node; \u digits
  uint32_t count = 0;  // string: code points; array: items; number: bytes; integer: digits
  uint64_t bits = 0;   // object: properties written; integer: magnitude
  bool operator==(const Frame&) const = default;
};

struct Thread {
  uint32_t piece = 0;  // == pieces().size(): all matched
  uint32_t off = 0;    // text: bytes matched; json: 1 once the value started
  uint32_t begin = 0, size = 0;  // frames[begin, begin + size) of the State, bottom first
};

struct State {
  std::vector<Thread> threads;
  std::vector<Frame> frames;
  std::vector<Frame> work;  // scratch of step() when this State is its output
  void clear() {
    threads.clear();
    frames.clear();
  }
};

class Matcher {
 public:
  // max_depth bounds the nesting of JSON values (recursive $ref).
  explicit Matcher(std::vector<Piece> pieces, uint32_t max_depth = 32);

  State initial() const;
  // Offers one byte to every thread of `in`; the survivors go to `out` (cleared first). False if none survive.
  bool step(const State& in, uint8_t byte, State& out) const;
  bool step_bytes(State& s, std::string_view bytes) const;  // in place; false (s unspecified) if rejected
  bool step_token(const State& in, int32_t id, State& out) const;  // a token piece's id
  bool can_end(const State& s) const;   // some thread has matched every piece
  bool must_end(const State& s) const;  // every thread has (nothing more can follow)
  void expected_tokens(const State& s, std::vector<int32_t>& out) const;  // ids of token pieces that may come next

  const std::vector<Piece>& pieces() const { return pieces_; }
  // Whether a thread sits inside a JSON string (not in an escape or a UTF-8 sequence): then any run of plain
  // characters (no quote, backslash or control byte; whole UTF-8) only adds to its length. Returns the code
  // points it may still take (0 when it cannot take one).
  bool in_plain_string(const State& s, const Thread& t, uint32_t& room) const;

 private:
  class Run;
  std::vector<Piece> pieces_;
  uint32_t max_depth_;
};

}  // namespace moe::grammar
