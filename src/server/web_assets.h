#pragma once
// The chat page (web/, bundled by web/build.mjs), embedded into the binary at build time (web.cmake).
#include <string_view>

namespace moe::server::web {
std::string_view index_html();
std::string_view app_js();
std::string_view style_css();
}  // namespace moe::server::web
