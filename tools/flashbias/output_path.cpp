// Output paths the CLI writes after long work (a bundle export, a benchmark report): checked
// before that work starts, so a mistyped path fails at once instead of losing the result.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>

#include "commands.h"
#include "flashbias/flashbias.hpp"

namespace flashbias::cli {

void require_writable_output(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path out(path);
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  std::error_code ec;
  if (fs::is_directory(out, ec))
    throw Error(ErrorCode::invalid_argument, fmt::format("{} {} is a directory; name a file", flag, path));
  if (!fs::is_directory(dir, ec) || ::access(dir.c_str(), W_OK) != 0)
    throw Error(ErrorCode::invalid_argument,
                fmt::format("{} {}: the directory {} does not exist or is not writable", flag, path, dir.string()));
}

}  // namespace flashbias::cli
