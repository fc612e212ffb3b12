// Placeholder until the server commands land; replaced by the owner of that area.
#include "cli/commands.h"
namespace moe::cli {
void register_server_commands(CLI::App&) {}
}  // namespace moe::cli
