// Subcommands of the `flashbias` CLI. Each registers itself on the app and stores its exit code
// in `rc` when it runs. The CLI stays thin: parse, call the library, print.
#pragma once

#include <CLI/CLI.hpp>

namespace flashbias::cli {

void add_info(CLI::App& app, int& rc);
void add_gen(CLI::App& app, int& rc);
void add_check(CLI::App& app, int& rc);
void add_demo(CLI::App& app, int& rc);
void add_tune(CLI::App& app, int& rc);
void add_cache(CLI::App& app, int& rc);
void add_bench_runtime(CLI::App& app, int& rc);
void add_bundle(CLI::App& app, int& rc);

}  // namespace flashbias::cli
