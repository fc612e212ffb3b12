#pragma once
// The chat page (web/), embedded into the binary at build time by embed_web.cmake.
#include <string_view>

namespace moe::server::web {
std::string_view index_html();
std::string_view app_js();
std::string_view style_css();
}  // namespace moe::server::web
