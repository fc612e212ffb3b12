#pragma once
// One exception type for every error a user can cause (bad files, bad flags, bad requests).
// Messages name what was wrong: the file, the tensor, the field.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

#define MOE_CHECK(cond, ...)       \
  do {                             \
    if (!(cond)) ::moe::fail(__VA_ARGS__); \
  } while (0)

}  // namespace moe
