#include "engine/grammar/constraint.h"

#include <limits>

#include "core/error.h"

namespace moe::grammar {

namespace {

void copy_thread(const State& from, const Thread& t, State& to) {
  Thread c = t;
  c.begin = uint32_t(to.frames.size());
  to.frames.insert(to.frames.end(), from.frames.begin() + t.begin, from.frames.begin() + t.begin + t.size);
  to.threads.push_back(c);
}

}  // namespace

GrammarConstraint::GrammarConstraint(std::shared_ptr<const Vocabulary> vocab, std::vector<Piece> pieces,
                                     std::optional<int32_t> end_token, uint32_t max_depth)
    : vocab_(std::move(vocab)), matcher_(std::move(pieces), max_depth), end_token_(end_token) {
  state_ = matcher_.initial();
}

void GrammarConstraint::walk(const TokenTrie& trie, uint32_t node, size_t depth) {
  const TokenTrie::Node& n = trie.nodes[node];
  if (depth_.size() < depth + 2) depth_.resize(depth + 2);
  for (uint32_t c = n.first_child; c < n.first_child + n.children; ++c) {
    const TokenTrie::Node& child = trie.nodes[c];
    if (!matcher_.step(depth_[depth], child.byte, depth_[depth + 1])) continue;
    for (uint32_t i = child.ids_begin; i < child.ids_end; ++i) allow(trie.ids[i]);
    if (child.children) walk(trie, c, depth + 1);
  }
}

const std::vector<uint64_t>& GrammarConstraint::allowed() {
  if (bits_valid_) return bits_;
  bits_.assign((size_t(vocab_->size()) + 63) / 64, 0);
  if (depth_.size() < 2) depth_.resize(64);
  State& others = depth_[0];
  State strings;
  others.clear();
  std::optional<uint32_t> room;  // the most code points a plain-string thread may still take
  for (const Thread& t : state_.threads) {
    if (t.piece == matcher_.pieces().size()) {
      if (end_token_) allow(*end_token_);
      continue;
    }
    if (matcher_.pieces()[t.piece].type == Piece::Type::token) {
      allow(matcher_.pieces()[t.piece].token);
      continue;
    }
    uint32_t r = 0;
    if (matcher_.in_plain_string(state_, t, r)) {
      copy_thread(state_, t, strings);
      room = std::max(room.value_or(0), r);
    } else {
      copy_thread(state_, t, others);
    }
  }
  if (!others.threads.empty()) walk(vocab_->all(), 0, 0);
  if (!strings.threads.empty()) {
    depth_[0] = std::move(strings);
    walk(vocab_->non_plain(), 0, 0);
    const auto& plain = vocab_->plain_by_length();
    if (!plain.empty() && *room >= plain.back().first) {
      const auto& pb = vocab_->plain_bits();
      for (size_t w = 0; w < bits_.size(); ++w) bits_[w] |= pb[w];
    } else {
      for (const auto& [len, id] : plain) {
        if (len > *room) break;
        allow(id);
      }
    }
  }
  bits_valid_ = true;
  return bits_;
}

bool GrammarConstraint::allows(int32_t token) {
  const auto& b = allowed();
  return token >= 0 && token < vocab_->size() && (b[size_t(token) / 64] >> (token % 64) & 1);
}

void GrammarConstraint::mask(std::span<float> logits) {
  const auto& b = allowed();
  const size_t n = std::min(logits.size(), size_t(vocab_->size()));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (size_t w = 0; w * 64 < n; ++w) {
    const uint64_t word = b[w];
    if (word == ~uint64_t(0)) continue;
    const size_t end = std::min(n, w * 64 + 64);
    for (size_t i = w * 64; i < end; ++i)
      if (!(word >> (i % 64) & 1)) logits[i] = kNegInf;
  }
  for (size_t i = n; i < logits.size(); ++i) logits[i] = kNegInf;
}

void GrammarConstraint::accept(int32_t token) {
  MOE_CHECK(token >= 0 && token < vocab_->size(), "token {} is outside the vocabulary of the output constraint", token);
  State next;
  bool ok = false;
  if (end_token_ && token == *end_token_ && matcher_.can_end(state_)) {
    next.threads.push_back(Thread{uint32_t(matcher_.pieces().size()), 0, 0, 0});
    ok = true;
  } else if (matcher_.step_token(state_, token, next)) {
    ok = true;
  } else if (!vocab_->excluded(token)) {
    next = state_;
    ok = matcher_.step_bytes(next, vocab_->bytes(token));
  }
  MOE_CHECK(ok, "token {} is not allowed by the output constraint here", token);
  state_ = std::move(next);
  bits_valid_ = false;
}

bool GrammarConstraint::complete() const { return matcher_.must_end(state_); }

}  // namespace moe::grammar
