// slearn_dist: the one binary. Errors from the library arrive here as exceptions and leave as one line on
// stderr and an exit code: 2 for input the user can fix, 1 for anything else.
#include <cstdio>
#include <iostream>
#include <map>

#include "cli/commands.hpp"
#include "slearn/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"slearn_dist: self-learning fine-tuning of chat models (SLearnLLM) on HPC clusters"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "slearn_dist 0.1.0");
  bool verbose_errors = false;
  app.add_flag("--debug-errors", verbose_errors, "Add the source location to error messages");

  std::map<CLI::App*, slearn::cli::Command> commands;
  auto add = [&](auto&& adder) {
    auto before = app.get_subcommands({});
    auto command = adder(app);
    auto after = app.get_subcommands({});
    for (auto* sub : after)
      if (std::find(before.begin(), before.end(), sub) == before.end()) commands[sub] = command;
  };
  add(slearn::cli::add_generate_command);
  add(slearn::cli::add_tokenize_command);
  add(slearn::cli::add_train_command);
  add(slearn::cli::add_merge_command);
  add(slearn::cli::add_run_command);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  try {
    for (auto& [sub, command] : commands)
      if (sub->parsed()) return command();
    return 2;
  } catch (const slearn::InputError& e) {
    std::cerr << "slearn_dist: error: " << e.what();
    if (verbose_errors) std::cerr << " [" << e.source_file() << ":" << e.source_line() << "]";
    std::cerr << std::endl;
    return 2;
  } catch (const slearn::Error& e) {
    std::cerr << "slearn_dist: error: " << e.what();
    if (verbose_errors) std::cerr << " [" << e.source_file() << ":" << e.source_line() << "]";
    std::cerr << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "slearn_dist: internal error: " << e.what() << std::endl;
    return 1;
  }
}
