#pragma once
// The compiled form of a JSON Schema: a graph of nodes (indices into Grammar::nodes) that the byte matcher
// (matcher.h) walks with a stack. Recursion ($ref) is an edge back to an earlier node, bounded by the matcher's
// stack depth. Literal values (enum, const, true, false, null) and object keys are byte tries.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/grammar/number_bounds.h"

namespace moe::grammar {

// A trie over byte strings; node 0 is the root. `value` is the index of the string ending at a node (-1: none);
// `below` has bit i set when string i (i < 64) ends at or under the node (object keys: which properties a key
// prefix can still name).
struct ByteTrie {
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t value = -1;
    uint64_t below = 0;
  };
  std::vector<Node> nodes{Node{}};

  void insert(const std::string& s, int32_t value);
  int32_t child(int32_t node, uint8_t byte) const;  // -1 if none
};

enum class Kind : uint8_t {
  object,    // properties (declared keys, in any order) or free keys with `additional` values
  array,     // items, min_items..max_items
  string,    // min_len..max_len code points
  integer,   // optional bounds
  number,    // any JSON number, or with `bounded` one within [num_lo, num_hi] (number_bounds.h)
  literals,  // one of the byte strings in `trie` (enum, const, booleans, null)
  any_of,    // one of `alts`
  ref,       // the node `target` (a $ref; resolved when a value starts)
};

struct Node {
  Kind kind = Kind::any_of;
  // object
  std::vector<int32_t> prop_nodes;  // value node of property i (key i of `trie`)
  uint64_t required = 0;            // bit i: property i is required
  int32_t additional = -1;          // free-key objects: the value node (-1: declared keys only)
  // array
  int32_t items = -1;
  uint32_t min_items = 0, max_items = std::numeric_limits<uint32_t>::max();
  // string
  uint32_t min_len = 0, max_len = std::numeric_limits<uint32_t>::max();
  // integer
  int64_t min = std::numeric_limits<int64_t>::min(), max = std::numeric_limits<int64_t>::max();
  // number with bounds: in units of 10^-15, written without exponent (number_bounds.h)
  bool bounded = false;
  Wide num_lo = 0, num_hi = 0;
  // literals (values) and object (keys: the JSON-escaped name and its closing quote, after the opening quote)
  ByteTrie trie;
  // any_of and ref: after compilation, the concrete (non-any_of, non-ref) nodes a value may be
  std::vector<int32_t> alts;
  // ref
  int32_t target = -1;
  // The fewest levels of nesting a value of this node needs (1: a scalar or an empty container); kNoValue when
  // no finite value exists. The matcher starts a value, key or item only where it still fits in its depth bound.
  uint32_t height = 0;
};

inline constexpr uint32_t kNoValue = 1u << 20;

// Limits that keep every generated value finite (the model cannot run away inside one number).
inline constexpr int kMaxProperties = 64;      // per object (a bit mask of the properties seen)
inline constexpr uint32_t kMaxNumberBytes = 24;  // a JSON number's text
inline constexpr int kMaxIntegerDigits = 18;   // |integer| < 10^18: bounds checks in int64

inline Node make_node(Kind k) {
  Node n;
  n.kind = k;
  return n;
}

struct Grammar {
  std::vector<Node> nodes;
  int32_t root = -1;
  int32_t key_string = -1;  // an unbounded string node: the keys of free-key objects
  int32_t add(Node n) {
    nodes.push_back(std::move(n));
    return int32_t(nodes.size() - 1);
  }
};

}  // namespace moe::grammar
