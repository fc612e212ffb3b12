#pragma once
// Progress of a long operation (loading a checkpoint, writing a random one), reported to whoever started it:
// `done` of `total` units (bytes), done <= total, called from the working thread. The last call has
// done == total. An empty function reports nothing. No state of its own: the caller's callback keeps what it needs.
#include <cstdint>
#include <functional>

namespace moe {

using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

}  // namespace moe
