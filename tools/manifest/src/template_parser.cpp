#include "template_parser.h"

#include <clang/Frontend/ASTUnit.h>
#include <clang/Tooling/Tooling.h>
#include <llvm/Support/FileSystem.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/Path.h>

#include <regex>

namespace flashbias::manifest_tool {
namespace {

// Newest arch clang 14 accepts for --cuda-gpu-arch. Families beyond it (sm90) are parsed with this
// one and __CUDA_ARCH__ set to the family's value: the front end only needs the macro (for
// #if __CUDA_ARCH__ guards); wgmma and TMA are inline PTX, which clang does not look into.
constexpr int kClangArchs[] = {50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86};

// The family of a template is its top folder under the root (sm80/, sm90/); anything else
// (common/) is parsed as sm80, the oldest family the project targets.
int family_sm(const std::string& file, const std::string& root) {
  llvm::SmallString<256> rel(file);
  llvm::sys::path::replace_path_prefix(rel, root, "");
  static const std::regex family(R"(^[/\\]?sm(\d+)a?[/\\])");
  std::smatch m;
  const std::string s(rel.str());
  if (std::regex_search(s, m, family)) return std::stoi(m[1].str());
  return 80;
}

}  // namespace

std::vector<std::string> clang_args(const std::string& file, const ParseOptions& opts) {
  const int sm = family_sm(file, opts.root);
  int clang_sm = kClangArchs[0];
  for (int a : kClangArchs)
    if (a <= sm) clang_sm = a;
  llvm::SmallString<256> builtin_headers(opts.resource_dir);
  llvm::sys::path::append(builtin_headers, "include");
  llvm::SmallString<256> stubs(opts.prelude_dir);
  llvm::sys::path::append(stubs, "clang_cuda_stubs");
  llvm::SmallString<256> prelude(opts.prelude_dir);
  llvm::sys::path::append(prelude, "flashbias_manifest_prelude.h");

  std::vector<std::string> args = {
      "-x", "cuda", "--cuda-device-only", "-nocudainc", "-nocudalib",
      "--cuda-gpu-arch=sm_" + std::to_string(clang_sm),
      // A CUDA SDK newer than clang 14 knows is fine: we use none of its headers or libraries.
      "-Wno-unknown-cuda-version",
      // Each template is parsed as a main file, yet written as a header (NVRTC includes it).
      "-Wno-pragma-once-outside-header",
      "-std=c++17",  // what the generator asks NVRTC for
      // No host or SDK headers: NVRTC has none either, so a template that needs one fails here.
      "-nostdinc", "-resource-dir", opts.resource_dir,
      "-isystem", std::string(builtin_headers.str()), "-isystem", std::string(stubs.str()),
      "-include", std::string(prelude.str()),
      "-DFLASHBIAS_MANIFEST_TOOL=1",
      "-U__CUDA_ARCH__", "-D__CUDA_ARCH__=" + std::to_string(sm * 10),
      "-I", opts.root,
  };
  for (const auto& d : opts.include_dirs) {
    args.push_back("-I");
    args.push_back(d);
  }
  args.insert(args.end(), opts.extra_args.begin(), opts.extra_args.end());
  return args;
}

std::unique_ptr<clang::ASTUnit> parse_template(const std::string& file, const ParseOptions& opts,
                                               std::vector<std::string>& errors) {
  auto buffer = llvm::MemoryBuffer::getFile(file);
  if (!buffer) {
    errors.push_back(file + ": error: cannot read: " + buffer.getError().message());
    return nullptr;
  }
  // ToolName only names argv[0]; -resource-dir in clang_args is what locates the builtin headers
  // (clang would otherwise derive it from this executable's path, which is in the build tree).
  auto ast = clang::tooling::buildASTFromCodeWithArgs((*buffer)->getBuffer(), clang_args(file, opts),
                                                      file, "flashbias-manifest");
  if (!ast) {
    errors.push_back(file + ": error: clang could not start on this file (see the messages above)");
    return nullptr;
  }
  if (ast->getDiagnostics().hasErrorOccurred()) {
    errors.push_back(file +
                     ": error: does not compile as CUDA device code (clang's messages above). The "
                     "templates must compile under NVRTC with no headers but their own; if the "
                     "missing name is an NVRTC built-in, declare it in "
                     "tools/manifest/prelude/flashbias_manifest_prelude.h");
    return nullptr;
  }
  return ast;
}

}  // namespace flashbias::manifest_tool
