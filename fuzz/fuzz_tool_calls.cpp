// libFuzzer target: the tool-call markup parsers (src/server/tool_call_parser.h: V3, V3.1 and V3.2 DSML, the
// last in src/server/dsml_parser.h). Any text, split anywhere, must
// give the same content and calls as the whole text (nothing lost or repeated).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "server/tool_call_parser.h"

using namespace moe::server;

namespace {
struct Result {
  std::string content;
  std::vector<ToolCall> calls;
};

Result run(ToolCallFormat f, std::string_view text, size_t step) {
  ToolCallParser p(f, "c");
  Result r;
  auto take = [&](const ToolCallParser::Out& o) {
    r.content += o.content;
    for (const auto& d : o.calls) {
      if (!d.id.empty()) {
        if (size_t(d.index) != r.calls.size()) std::abort();
        r.calls.push_back({d.id, d.name, ""});
      }
      if (size_t(d.index) >= r.calls.size()) std::abort();
      r.calls[size_t(d.index)].arguments += d.arguments;
    }
  };
  for (size_t i = 0; i < text.size(); i += step) take(p.feed(text.substr(i, step)));
  take(p.flush());
  if (r.calls.size() != p.calls().size()) std::abort();
  for (size_t i = 0; i < r.calls.size(); ++i)
    if (r.calls[i].arguments != p.calls()[i].arguments) std::abort();
  return r;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (ToolCallFormat f : {ToolCallFormat::v3, ToolCallFormat::v31, ToolCallFormat::dsml}) {
    const Result whole = run(f, text, text.size() + 1);
    for (size_t step : {size_t(1), size_t(2), size_t(3) + size % 5}) {
      const Result r = run(f, text, step);
      if (r.content != whole.content || r.calls.size() != whole.calls.size()) std::abort();
      for (size_t i = 0; i < r.calls.size(); ++i)
        if (r.calls[i].name != whole.calls[i].name || r.calls[i].arguments != whole.calls[i].arguments) std::abort();
    }
    if (whole.content.size() > size) std::abort();
  }
  return 0;
}
