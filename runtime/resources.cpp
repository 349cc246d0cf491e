#include "runtime/resources.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace flashbias {
namespace {

// The integer that ends right before `pos` in `text` (skipping blanks), or -1.
int number_before(std::string_view text, std::size_t pos) {
  std::size_t end = pos;
  while (end > 0 && text[end - 1] == ' ') --end;
  std::size_t begin = end;
  while (begin > 0 && text[begin - 1] >= '0' && text[begin - 1] <= '9') --begin;
  if (begin == end) return -1;
  long long value = 0;
  for (std::size_t i = begin; i < end; ++i) {
    value = value * 10 + (text[i] - '0');
    if (value > INT32_MAX) return -1;
  }
  return static_cast<int>(value);
}

// The number written before `suffix` within `line`, or -1 if the suffix is absent.
int field(std::string_view line, std::string_view suffix) {
  const std::size_t pos = line.find(suffix);
  return pos == std::string_view::npos ? -1 : number_before(line, pos);
}

// The number written after `prefix` within `line`, or -1.
int field_after(std::string_view line, std::string_view prefix) {
  std::size_t pos = line.find(prefix);
  if (pos == std::string_view::npos) return -1;
  pos += prefix.size();
  while (pos < line.size() && line[pos] == ' ') ++pos;
  std::size_t end = pos;
  while (end < line.size() && line[end] >= '0' && line[end] <= '9') ++end;
  return end == pos ? -1 : number_before(line, end);
}

std::string_view line_at(std::string_view text, std::size_t pos, std::size_t* next) {
  std::size_t end = text.find('\n', pos);
  if (end == std::string_view::npos) end = text.size();
  *next = end < text.size() ? end + 1 : end;
  return text.substr(pos, end - pos);
}

// --- ELF64 reading, bounds-checked: a cubin may come from a cache file we do not trust.
template <class T>
bool read_at(std::span<const char> bytes, std::uint64_t offset, T* out) {
  if (offset > bytes.size() || bytes.size() - offset < sizeof(T)) return false;
  std::memcpy(out, bytes.data() + offset, sizeof(T));
  return true;
}

struct Section {
  std::uint32_t name, type, link;
  std::uint64_t offset, size, entsize;
};

constexpr std::uint32_t kShtSymtab = 2;
// EIATTR codes and formats of NVIDIA's .nv.info attribute lists (documented by cuobjdump's
// -elf output and stable since Kepler).
constexpr std::uint8_t kEifmtSval = 0x04;  // followed by a u16 size and that many bytes
constexpr std::uint8_t kEiattrFrameSize = 0x11;
constexpr std::uint8_t kEiattrRegcount = 0x2f;

}  // namespace

std::string KernelResources::str() const {
  return fmt::format("regs={} spill_st={} spill_ld={} stack={} smem={} bar={}{}", registers, spill_store_bytes,
                     spill_load_bytes, stack_frame_bytes, static_smem_bytes, barriers,
                     wgmma_serialized ? " wgmma_serialized" : "");
}

std::vector<std::string_view> wgmma_serialization_notes(std::string_view log) {
  std::vector<std::string_view> notes;
  for (std::size_t pos = 0; pos < log.size();) {
    const std::string_view line = line_at(log, pos, &pos);
    if (line.find("wgmma.mma_async instructions are serialized") != std::string_view::npos) notes.push_back(line);
  }
  return notes;
}

std::optional<KernelResources> parse_ptxas_report(std::string_view log, std::string_view entry) {
  // ptxas prints, per entry:
  //   ptxas info    : Compiling entry function 'k' for 'sm_90a'
  //   ptxas info    : Function properties for k
  //   ptxas         .     256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
  //   ptxas info    : Used 32 registers, used 1 barriers, 256 bytes cumulative stack size, 1024 bytes smem
  //   ptxas info    : Compile time = 28.380 ms
  //   ptxas info    : Function properties for <non-inlined callee>      (zero or more)
  //   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
  // "N bytes smem" is omitted when the kernel declares none.
  const std::string header = fmt::format("Compiling entry function '{}'", entry);
  const std::size_t start = log.find(header);
  if (start == std::string_view::npos) return std::nullopt;
  std::size_t stop = log.find("Compiling entry function '", start + header.size());
  const std::string_view block = log.substr(start, stop == std::string_view::npos ? log.npos : stop - start);

  KernelResources r;
  // ptxas notes a serialised wgmma pipeline anywhere in the log (before the entry's block).
  const std::string quoted = fmt::format("function '{}'", entry);
  for (const std::string_view note : wgmma_serialization_notes(log))
    r.wgmma_serialized = r.wgmma_serialized || note.find(quoted) != std::string_view::npos;
  const std::string own_properties = fmt::format("Function properties for {}", entry);
  bool next_is_own = false;
  bool seen_properties = false;
  for (std::size_t pos = 0; pos < block.size();) {
    const std::string_view line = line_at(block, pos, &pos);
    if (line.find("Function properties for ") != std::string_view::npos) {
      const std::size_t at = line.find(own_properties);
      next_is_own = at != std::string_view::npos && at + own_properties.size() == line.size();
      continue;
    }
    if (line.find("bytes stack frame") != std::string_view::npos) {
      const int st = field(line, "bytes spill stores");
      const int ld = field(line, "bytes spill loads");
      if (st >= 0 && ld >= 0) {
        r.spill_store_bytes = (seen_properties ? r.spill_store_bytes : 0) + st;
        r.spill_load_bytes = (seen_properties ? r.spill_load_bytes : 0) + ld;
        seen_properties = true;
      }
      if (next_is_own) r.stack_frame_bytes = field(line, "bytes stack frame");
      next_is_own = false;
      continue;
    }
    if (r.registers < 0 && line.find("Used ") != std::string_view::npos &&
        line.find(" registers") != std::string_view::npos) {
      r.registers = field_after(line, "Used ");
      r.barriers = field_after(line, "used ");
      const int smem = field(line, "bytes smem");
      r.static_smem_bytes = smem >= 0 ? smem : 0;  // omitted means none declared
    }
  }
  return r;
}

std::optional<CubinAttributes> read_cubin_attributes(std::span<const char> cubin, std::string_view entry) {
  static constexpr unsigned char kMagic[] = {0x7f, 'E', 'L', 'F', 2 /*64-bit*/, 1 /*little endian*/};
  if (cubin.size() < 64 || std::memcmp(cubin.data(), kMagic, sizeof(kMagic)) != 0) return std::nullopt;
  std::uint64_t shoff = 0;
  std::uint16_t shentsize = 0, shnum = 0, shstrndx = 0;
  if (!read_at(cubin, 0x28, &shoff) || !read_at(cubin, 0x3a, &shentsize) || !read_at(cubin, 0x3c, &shnum) ||
      !read_at(cubin, 0x3e, &shstrndx) || shentsize < 64 || shstrndx >= shnum) {
    return std::nullopt;
  }
  std::vector<Section> sections(shnum);
  for (std::uint16_t i = 0; i < shnum; ++i) {
    const std::uint64_t at = shoff + std::uint64_t{i} * shentsize;
    Section& s = sections[i];
    if (!read_at(cubin, at + 0, &s.name) || !read_at(cubin, at + 4, &s.type) || !read_at(cubin, at + 24, &s.offset) ||
        !read_at(cubin, at + 32, &s.size) || !read_at(cubin, at + 40, &s.link) || !read_at(cubin, at + 56, &s.entsize)) {
      return std::nullopt;
    }
    if (s.offset > cubin.size() || cubin.size() - s.offset < s.size) {
      if (s.type != 8 /*SHT_NOBITS occupies no file space*/) return std::nullopt;
    }
  }
  auto c_string = [&](const Section& table, std::uint32_t offset) -> std::string_view {
    if (offset >= table.size) return {};
    const char* begin = cubin.data() + table.offset + offset;
    const std::size_t max = table.size - offset;
    return std::string_view(begin, strnlen(begin, max));
  };
  const Section& shstr = sections[shstrndx];

  // The symbol index of the entry: .nv.info attributes refer to functions by it.
  std::optional<std::uint32_t> symbol;
  const Section* info = nullptr;
  for (const Section& s : sections) {
    const std::string_view name = c_string(shstr, s.name);
    if (name == ".nv.info") info = &s;
    if (s.type != kShtSymtab || s.entsize < 24 || s.link >= sections.size()) continue;
    const Section& strtab = sections[s.link];
    for (std::uint64_t i = 0; i < s.size / s.entsize && !symbol; ++i) {
      std::uint32_t st_name = 0;
      if (!read_at(cubin, s.offset + i * s.entsize, &st_name)) return std::nullopt;
      if (c_string(strtab, st_name) == entry) symbol = static_cast<std::uint32_t>(i);
    }
  }
  if (!symbol || info == nullptr) return std::nullopt;

  CubinAttributes attrs;
  for (std::uint64_t pos = info->offset, end = info->offset + info->size; pos + 4 <= end;) {
    std::uint8_t format = 0, attribute = 0;
    std::uint16_t size = 0;
    read_at(cubin, pos, &format);
    read_at(cubin, pos + 1, &attribute);
    read_at(cubin, pos + 2, &size);
    pos += 4;
    if (format != kEifmtSval) continue;  // fixed 4-byte entries carry no per-function value we need
    if (pos + size > end) break;
    std::uint32_t sym = 0, value = 0;
    if (size >= 8 && read_at(cubin, pos, &sym) && read_at(cubin, pos + 4, &value) && sym == *symbol) {
      if (attribute == kEiattrRegcount) attrs.registers = static_cast<int>(value);
      if (attribute == kEiattrFrameSize) attrs.frame_bytes = static_cast<int>(value);
    }
    pos += size;
  }
  if (attrs.registers < 0 && attrs.frame_bytes < 0) return std::nullopt;
  return attrs;
}

KernelResources kernel_resources(std::span<const char> cubin, std::string_view log, std::string_view entry) {
  KernelResources r = parse_ptxas_report(log, entry).value_or(KernelResources{});
  if (const auto attrs = read_cubin_attributes(cubin, entry)) {
    if (attrs->registers >= 0) r.registers = attrs->registers;
    if (attrs->frame_bytes >= 0) r.stack_frame_bytes = attrs->frame_bytes;
  }
  return r;
}

}  // namespace flashbias
