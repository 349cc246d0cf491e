// TemplateParser: one template file -> the Clang AST that NVRTC's front end would see for it.
//
// Each .cuh is parsed on its own, as the main file of a translation unit: the templates promise to
// be self-contained (NVRTC compiles them with nothing else around them), and parsing them one by
// one checks that promise. The parse is CUDA device-only without CUDA headers; the prelude in
// tools/manifest/prelude/ supplies what NVRTC builds in (the __device__ family of keywords, vector
// types, threadIdx and friends, the math and warp intrinsics).
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace clang {
class ASTUnit;
}

namespace flashbias::manifest_tool {

struct ParseOptions {
  std::string root;                       ///< templates root: include names are relative to it
  std::string prelude_dir;                ///< holds flashbias_manifest_prelude.h
  std::string resource_dir;               ///< clang's resource dir (builtin headers)
  std::vector<std::string> include_dirs;  ///< extra -I after the root (fixtures reuse templates/common)
  std::vector<std::string> extra_args;    ///< appended verbatim (debugging, -D for experiments)
};

/// The clang command line used for `file` (without the file itself); printed by --print-args.
std::vector<std::string> clang_args(const std::string& file, const ParseOptions& opts);

/// Parse `file`. Diagnostics go to stderr in clang's usual format. Returns null and appends a
/// sentence to `errors` when the file does not parse without errors.
std::unique_ptr<clang::ASTUnit> parse_template(const std::string& file, const ParseOptions& opts,
                                               std::vector<std::string>& errors);

}  // namespace flashbias::manifest_tool
