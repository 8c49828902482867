// Subcommands of slearn_dist. Each registers its options on the CLI11 app and returns the function that
// runs it; library errors propagate to main(), which prints them as one line.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace slearn::cli {

using Command = std::function<int()>;

Command add_generate_command(CLI::App& app);
Command add_tokenize_command(CLI::App& app);
Command add_train_command(CLI::App& app);
Command add_merge_command(CLI::App& app);
Command add_run_command(CLI::App& app);

}  // namespace slearn::cli
