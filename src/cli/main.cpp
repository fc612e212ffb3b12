// moe: the command-line program. Every error a user can cause ends in one line on stderr and exit code 1.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "cli/launcher.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moe.cpp: DeepSeek-V3-architecture mixture-of-experts models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", moe::cli::version_text, "Print the version, commit and library versions");
  // Every option's default value is shown in --help (captured when each option is added; subcommands inherit it).
  app.option_defaults()->always_capture_default();
  moe::cli::register_model_commands(app);
  moe::cli::register_tokenizer_commands(app);
  moe::cli::register_text_commands(app);
  moe::cli::register_server_commands(app);
  moe::cli::register_train_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const moe::cli::JobDone& done) {  // this process launched the job's ranks (cli/launcher.h)
    return done.code;
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
