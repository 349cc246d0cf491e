// flashbias: offline tuning, inspection, checks, benchmarks and bundles for FlashBias JIT.
#include <fmt/format.h>

#include <cstdio>

#include "commands.h"
#include "flashbias/flashbias.hpp"
#include "tuner/bundle_hooks.h"
#include "tuner/default_hooks.h"

int main(int argc, char** argv) {
  CLI::App app{"FlashBias JIT: attention with a low-rank bias, generated, compiled and tuned at run time.\n"
               "  O = softmax(scale * Q K^T + Qb Kb^T + mask) V"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "flashbias 0.1.0");
  int rc = 0;
  flashbias::cli::add_info(app, rc);
  flashbias::cli::add_gen(app, rc);
  flashbias::cli::add_check(app, rc);
  flashbias::cli::add_demo(app, rc);
  flashbias::cli::add_tune(app, rc);
  flashbias::cli::add_cache(app, rc);
  flashbias::cli::add_bench_runtime(app, rc);
  flashbias::cli::add_bundle(app, rc);
  // Contexts made by any subcommand use the per-user kernel store and the tuned winners.
  flashbias::tuner::enable_default_store_hooks();
  flashbias::tuner::enable_bundle_hooks();  // then FLASHBIAS_BUNDLE and embedded bundles
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const flashbias::Error& e) {
    std::fprintf(stderr, "flashbias: error (%s): %s\n", flashbias::to_string(e.code()), e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashbias: error: %s\n", e.what());
    return 2;
  }
  return rc;
}
