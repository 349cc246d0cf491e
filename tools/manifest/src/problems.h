// Problems: the errors one run found. The tool reports every problem it can find in one run (a
// template author fixing a knob table wants all of it, not one message per build), each in the
// compiler's "file:line: error: text" form so that editors and build logs link to the place.
#pragma once

#include <string>
#include <vector>

#include "manifest.h"

namespace flashbias::manifest_tool {

struct Problems {
  std::string root;  ///< prefixed to SourcePos::file so the location opens from any directory
  std::vector<std::string> messages;

  void error(const SourcePos& at, const std::string& text) {
    messages.push_back(root + "/" + at.file + ":" + std::to_string(at.line) + ": error: " + text);
  }
  void error(const std::string& text) { messages.push_back("error: " + text); }
  bool any() const { return !messages.empty(); }
};

}  // namespace flashbias::manifest_tool
