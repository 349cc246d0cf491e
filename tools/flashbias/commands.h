// Subcommands of the `flashbias` CLI. Each registers itself on the app and stores its exit code
// in `rc` when it runs. The CLI stays thin: parse, call the library, print.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace flashbias::cli {

void add_info(CLI::App& app, int& rc);
void add_gen(CLI::App& app, int& rc);
void add_check(CLI::App& app, int& rc);
void add_demo(CLI::App& app, int& rc);
void add_tune(CLI::App& app, int& rc);
void add_cache(CLI::App& app, int& rc);
void add_bench_runtime(CLI::App& app, int& rc);
void add_bundle(CLI::App& app, int& rc);

/// Throws Error(invalid_argument) naming `flag` when `path` is a directory or its directory does
/// not exist or cannot be written (output_path.cpp). Commands call it before their long work.
void require_writable_output(const std::string& flag, const std::string& path);

}  // namespace flashbias::cli
