// Placeholder until the text commands land; replaced by the owner of that area.
#include "cli/commands.h"
namespace moe::cli {
void register_text_commands(CLI::App&) {}
}  // namespace moe::cli
