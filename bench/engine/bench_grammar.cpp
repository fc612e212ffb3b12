// Per-token cost of structured output on the DeepSeek-V3 tokenizer (models/deepseek-v3-tokenizer, 129k tokens):
// one pass over a realistic document under its schema, timing each step as the scheduler pays it: mask() over a
// logits row of the model's width (129,280) and accept(). Prints the vocabulary build time, then per-token
// median / mean / max by the kind of position (structure, inside a string, inside a number) and overall.
// Usage: bench_grammar [tokenizer dir] [passes]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "engine/grammar/constraint.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace moe;
using namespace moe::grammar;
using Clock = std::chrono::steady_clock;

const char* kSchema = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 40},
    "country": {"enum": ["CH", "FR", "JP", "US", "DE"]},
    "population": {"type": "integer", "minimum": 0, "maximum": 40000000},
    "coastal": {"type": "boolean"},
    "mayor": {"type": ["string", "null"]},
    "summary": {"type": "string"},
    "districts": {"type": "array", "maxItems": 8, "items": {"type": "object",
      "properties": {"id": {"type": "integer"}, "label": {"type": "string", "maxLength": 20},
                     "area_km2": {"type": "number"}},
      "required": ["id", "label"], "additionalProperties": false}}
  },
  "required": ["name", "country", "population", "districts"],
  "additionalProperties": false
})";

const char* kDocument =
    R"({"name":"Zürich","country":"CH","population":443037,"coastal":false,"mayor":"Corine Mauch",)"
    R"("summary":"The largest city in Switzerland, on the northern end of Lake Zürich; a centre of banking, )"
    R"(insurance and research, with the ETH and the university.","districts":[{"id":1,"label":"Altstadt",)"
    R"("area_km2":1.8},{"id":2,"label":"Wollishofen","area_km2":11.6},{"id":7,"label":"Hottingen"}]})";

double us_since(Clock::time_point t) { return std::chrono::duration<double, std::micro>(Clock::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "models/deepseek-v3-tokenizer";
  const int passes = argc > 2 ? std::atoi(argv[2]) : 5;
  const Tokenizer tok = Tokenizer::load(dir);
  auto t0 = Clock::now();
  const auto vocab = Vocabulary::build(tok);
  std::printf("vocabulary: %d tokens, build %.0f ms; trie %zu nodes, %zu plain tokens\n", vocab->size(),
              us_since(t0) / 1000, vocab->all().nodes.size(), vocab->plain_by_length().size());
  t0 = Clock::now();
  const Schema schema = Schema::compile(nlohmann::json::parse(kSchema));
  std::printf("schema compile: %.0f us\n", us_since(t0));
  const std::vector<int32_t> ids = tok.encode(kDocument);
  std::vector<float> row(129280, 0.5f);
  std::map<std::string, std::vector<double>> by_kind;
  for (int pass = 0; pass < passes; ++pass) {
    GrammarConstraint c(vocab, {Piece::value(schema)}, tok.eos_id());
    for (int32_t id : ids) {
      // the kind of position: inside a string, a number, or structure (keys are strings too)
      std::string kind = "structure";
      uint32_t room = 0;
      for (const Thread& t : c.state().threads)
        if (c.matcher().in_plain_string(c.state(), t, room)) kind = "in a string";
      if (kind == "structure" && !c.state().threads.empty() && c.state().threads[0].size) {
        const Frame& f = c.state().frames[c.state().threads[0].begin + c.state().threads[0].size - 1];
        const Kind k = schema.grammar().nodes[size_t(f.node)].kind;
        if (k == Kind::integer || k == Kind::number) kind = "in a number";
      }
      std::fill(row.begin(), row.end(), 0.5f);
      const auto t = Clock::now();
      c.mask(row);
      if (row[size_t(id)] != 0.5f) {
        std::fprintf(stderr, "token %d masked\n", id);
        return 1;
      }
      c.accept(id);
      const double us = us_since(t);
      by_kind[kind].push_back(us);
      by_kind["all tokens"].push_back(us);
    }
    if (!c.complete()) {
      std::fprintf(stderr, "document not complete\n");
      return 1;
    }
  }
  std::printf("document: %zu tokens, %d passes; per token (mask of a 129,280 row + accept):\n", ids.size(), passes);
  std::printf("| position | tokens | median | p90 | mean | max |\n| --- | --- | --- | --- | --- | --- |\n");
  for (auto& [kind, v] : by_kind) {
    std::sort(v.begin(), v.end());
    double sum = 0;
    for (double x : v) sum += x;
    std::printf("| %s | %zu | %.0f us | %.0f us | %.0f us | %.0f us |\n", kind.c_str(), v.size() / size_t(passes),
                v[v.size() / 2], v[v.size() * 9 / 10], sum / double(v.size()), v.back());
  }
  return 0;
}
