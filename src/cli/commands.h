#pragma once
// Each area of the program adds its subcommands to the one `moe` app from its own file.
#include <CLI/CLI.hpp>

namespace moe::cli {

void register_model_commands(CLI::App& app);      // info, logits, generate, bench, create-random (model_commands.cpp)
void register_tokenizer_commands(CLI::App& app);  // tokenize, chat-template (tokenizer_commands.cpp)
void register_text_commands(CLI::App& app);       // chat; generate --prompt is in model_commands (text_commands.cpp)
void register_server_commands(CLI::App& app);     // serve, bench-serve, feedback (server_commands.cpp)
void register_train_commands(CLI::App& app);      // train-steps, tokenize-corpus, train (train_commands.cpp)
std::string version_text();                        // moe --version (version_command.cpp)

}  // namespace moe::cli
