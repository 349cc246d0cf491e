// flashbias-manifest: reads the kernel templates with Clang and writes the template manifest.
//
//   flashbias-manifest --root templates --header gen/flashbias/manifest.gen.h
//                      --json gen/flashbias/manifest.json templates/sm80/*.cuh ...
//
// Pipeline (one file per stage): TemplateParser (file -> AST) -> EntryExtractor (AST -> Entry)
// -> KnobSpaceCheck (knob tables vs. rules) -> writers (JSON, listing, header). Every problem of
// every file is reported before the tool exits with status 1; outputs are written only when there
// is none, and only when their contents change (so an unchanged manifest rebuilds nothing).
#include <clang/AST/ASTContext.h>
#include <clang/Frontend/ASTUnit.h>
#include <llvm/Support/CommandLine.h>
#include <llvm/Support/FileSystem.h>
#include <llvm/Support/Path.h>
#include <llvm/Support/raw_ostream.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "entry_extractor.h"
#include "knob_space_check.h"
#include "template_parser.h"
#include "writers.h"

namespace cl = llvm::cl;
using namespace flashbias::manifest_tool;

namespace {

cl::OptionCategory category("flashbias-manifest options");
cl::list<std::string> files(cl::Positional, cl::desc("<template .cuh files>"), cl::OneOrMore, cl::cat(category));
cl::opt<std::string> root("root", cl::desc("templates root; include names and manifest paths are relative to it"),
                          cl::Required, cl::cat(category));
cl::list<std::string> include_dirs("I", cl::desc("additional include directory (after the root)"), cl::Prefix,
                                   cl::cat(category));
cl::opt<std::string> header_out("header", cl::desc("write the generated C++ header here"), cl::cat(category));
cl::opt<std::string> json_out("json", cl::desc("write the JSON manifest here ('-' for stdout)"), cl::cat(category));
cl::opt<std::string> listing_out("listing", cl::desc("write the text listing here ('-' for stdout)"),
                                 cl::cat(category));
cl::opt<std::string> ns("namespace", cl::desc("namespace of the generated data"),
                        cl::init("flashbias::manifest"), cl::cat(category));
cl::opt<std::string> prelude_dir("prelude-dir", cl::desc("directory of flashbias_manifest_prelude.h"),
                                 cl::init(FLASHBIAS_MANIFEST_PRELUDE_DIR), cl::cat(category));
cl::opt<std::string> resource_dir("resource-dir", cl::desc("clang resource directory (builtin headers)"),
                                  cl::init(FLASHBIAS_CLANG_RESOURCE_DIR), cl::cat(category));
cl::list<std::string> extra_args("extra-arg", cl::desc("extra clang argument"), cl::cat(category));
cl::opt<bool> print_args("print-args", cl::desc("print the clang command line per file and exit"),
                         cl::cat(category));

std::string absolute(const std::string& p) {
  llvm::SmallString<256> s(p);
  llvm::sys::fs::make_absolute(s);
  llvm::sys::path::remove_dots(s, /*remove_dot_dot=*/true);
  return std::string(s.str());
}

/// Writes `text` to `path` unless it already holds exactly that; via a temporary and a rename, so
/// a reader (or an interrupted build) never sees half a file.
bool write_if_changed(const std::string& path, const std::string& text) {
  if (path == "-") {
    std::cout << text;
    return true;
  }
  {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      if (ss.str() == text) return true;
    }
  }
  llvm::SmallString<256> dir(path);
  llvm::sys::path::remove_filename(dir);
  if (!dir.empty()) llvm::sys::fs::create_directories(dir);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) {
      std::cerr << "flashbias-manifest: error: cannot write " << tmp << "\n";
      return false;
    }
  }
  if (auto ec = llvm::sys::fs::rename(tmp, path)) {
    std::cerr << "flashbias-manifest: error: cannot rename " << tmp << " to " << path << ": " << ec.message() << "\n";
    return false;
  }
  return true;
}

/// Entries reached from several files (a header included by two templates) are the same
/// declaration: keep one. Two different declarations claiming the same (direction, family) are a
/// mistake: the generator could not tell which one to instantiate.
std::vector<Entry> unique_entries(std::vector<Entry> all, Problems& problems) {
  std::vector<Entry> out;
  for (auto& e : all) {
    bool repeat = false;
    for (const auto& o : out) {
      if (o.name == e.name && o.pos.file == e.pos.file && o.pos.line == e.pos.line) {
        repeat = true;
      } else if (o.direction == e.direction && o.family == e.family) {
        problems.error(e.pos, "'" + e.name + "' is declared FLASHBIAS_KERNEL(\"" + e.direction + "\", \"" +
                                  e.family + "\"), and so is '" + o.name + "' (" + o.pos.str() +
                                  "); each (direction, family) names exactly one entry template");
        repeat = true;
      }
    }
    if (!repeat) out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.family, a.direction) < std::tie(b.family, b.direction);
  });
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(argc, argv,
                              "Extracts the template manifest (kernel entries, parameters, knobs, "
                              "legality rules) from the FlashBias kernel templates.\n");

  ParseOptions opts;
  opts.root = absolute(root);
  opts.prelude_dir = absolute(prelude_dir);
  opts.resource_dir = resource_dir;
  for (const auto& d : include_dirs) opts.include_dirs.push_back(absolute(d));
  opts.extra_args.assign(extra_args.begin(), extra_args.end());

  std::vector<std::string> paths;
  for (const auto& f : files) paths.push_back(absolute(f));
  std::sort(paths.begin(), paths.end());
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());

  if (print_args) {
    for (const auto& p : paths) {
      std::cout << p << ":";
      for (const auto& a : clang_args(p, opts)) std::cout << " " << a;
      std::cout << "\n";
    }
    return 0;
  }

  Problems problems;
  {
    llvm::SmallString<256> real;
    problems.root = llvm::sys::fs::real_path(opts.root, real) ? opts.root : std::string(real.str());
  }
  std::vector<Entry> all;
  for (const auto& p : paths) {
    auto ast = parse_template(p, opts, problems.messages);
    if (ast) extract_entries(ast->getASTContext(), opts.root, all, problems);
  }
  Manifest m;
  m.entries = unique_entries(std::move(all), problems);
  for (const auto& e : m.entries) check_knob_space(e, problems);

  if (problems.any()) {
    for (const auto& msg : problems.messages) std::cerr << msg << "\n";
    std::cerr << "flashbias-manifest: " << problems.messages.size()
              << " error(s) in the kernel templates; no manifest written\n";
    return 1;
  }

  const std::string json = to_json(m).dump(2) + "\n";
  const std::string list = listing(m);
  bool ok = true;
  if (!json_out.empty()) ok &= write_if_changed(json_out, json);
  if (!listing_out.empty()) ok &= write_if_changed(listing_out, list);
  if (!header_out.empty()) {
    try {
      ok &= write_if_changed(header_out, header(m, ns, json, list));
    } catch (const std::exception& ex) {
      std::cerr << "flashbias-manifest: error: " << ex.what() << "\n";
      ok = false;
    }
  }
  return ok ? 0 : 1;
}
