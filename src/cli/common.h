#pragma once
// Helpers shared by the command files.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/sampler.h"

namespace moe::cli {

extern int g_threads;      // --threads; 0 = all cores
void apply_thread_count();  // sizes the global pool before first use

std::vector<int32_t> parse_token_list(const std::string& text);  // "3,17,42"
std::string join_token_list(const std::vector<int32_t>& ids);     // the inverse
std::string human_count(int64_t n);                               // 15.96 B
std::string human_bytes(int64_t n);                               // 5.80 GB

// --temperature, --top-p, --top-k, --min-p, --repetition-penalty on a command that samples.
void add_sampling_options(CLI::App* cmd, SamplingParams& sampling);

void register_generate_command(CLI::App& app);  // generate_command.cpp
void register_bench_command(CLI::App& app);     // bench_command.cpp

}  // namespace moe::cli
