// Parsing of ptxas' --verbose report and of cubin .nv.info attributes, on recorded samples.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "runtime/resources.h"

namespace flashbias {
namespace {

// Recorded from NVRTC 13.0 (--gpu-architecture=sm_90a --ptxas-options=--verbose).
constexpr const char* kReportSm90 =
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
    "ptxas info    : Function properties for k\n"
    "ptxas         .     256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 32 registers, used 1 barriers, 256 bytes cumulative stack size, 1024 bytes smem\n"
    "ptxas info    : Compile time = 28.380 ms\n";

// Recorded from NVRTC 13.0 (sm_80, --maxrregcount=24): two entries and a non-inlined callee
// whose properties follow the first entry's report.
constexpr const char* kReportTwoEntries =
    "ptxas info    : Overriding maximum register limit 256 for 'k' with  24 of maxrregcount option\n"
    "ptxas info    : Overriding maximum register limit 256 for 'other' with  24 of maxrregcount option\n"
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
    "ptxas info    : Function properties for k\n"
    "ptxas         .     128 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
    "ptxas info    : Used 24 registers, used 1 barriers, 128 bytes cumulative stack size, 400 bytes smem, 364 "
    "bytes cmem[0]\n"
    "ptxas info    : Compile time = 17.490 ms\n"
    "ptxas info    : Function properties for _Z1fPfi\n"
    "ptxas         .     0 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
    "ptxas info    : Compiling entry function 'other' for 'sm_80'\n"
    "ptxas info    : Function properties for other\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 8 registers, used 0 barriers, 360 bytes cmem[0]\n"
    "ptxas info    : Compile time = 1.100 ms";

}  // namespace

TEST_CASE("ptxas report of one entry", "[cpu][runtime][resources]") {
  const auto r = parse_ptxas_report(kReportSm90, "k");
  REQUIRE(r.has_value());
  CHECK(r->registers == 32);
  CHECK(r->stack_frame_bytes == 256);
  CHECK(r->spill_store_bytes == 0);
  CHECK(r->spill_load_bytes == 0);
  CHECK(r->static_smem_bytes == 1024);
  CHECK(r->barriers == 1);
  CHECK(r->complete());
  CHECK_FALSE(r->spills());
  CHECK(r->str() == "regs=32 spill_st=0 spill_ld=0 stack=256 smem=1024 bar=1");
}

TEST_CASE("ptxas report: entries are told apart, callee spills count", "[cpu][runtime][resources]") {
  const auto k = parse_ptxas_report(kReportTwoEntries, "k");
  REQUIRE(k.has_value());
  CHECK(k->registers == 24);
  CHECK(k->stack_frame_bytes == 128);
  CHECK(k->spill_store_bytes == 8 + 12);
  CHECK(k->spill_load_bytes == 4 + 16);
  CHECK(k->static_smem_bytes == 400);
  CHECK(k->spills());

  const auto other = parse_ptxas_report(kReportTwoEntries, "other");
  REQUIRE(other.has_value());
  CHECK(other->registers == 8);
  CHECK(other->barriers == 0);
  CHECK(other->static_smem_bytes == 0);  // not mentioned: none declared
  CHECK(other->stack_frame_bytes == 0);
  CHECK(other->spill_store_bytes == 0);

  CHECK_FALSE(parse_ptxas_report(kReportTwoEntries, "missing").has_value());
  CHECK_FALSE(parse_ptxas_report(kReportTwoEntries, "o").has_value());  // no prefix matches
  CHECK_FALSE(parse_ptxas_report("", "k").has_value());
}

TEST_CASE("ptxas report: a serialised wgmma pipeline is told per entry", "[cpu][runtime][resources]") {
  const std::string log = std::string(
      "ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to "
      "non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline "
      "stage in the function 'other'\n"
      "ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized due to "
      "insufficient register resources for the function 'other2'\n") + kReportTwoEntries;
  const auto k = parse_ptxas_report(log, "k");
  const auto other = parse_ptxas_report(log, "other");
  REQUIRE(k.has_value());
  REQUIRE(other.has_value());
  CHECK_FALSE(k->wgmma_serialized);
  CHECK(other->wgmma_serialized);
  CHECK(other->str() == "regs=8 spill_st=0 spill_ld=0 stack=0 smem=0 bar=0 wgmma_serialized");
  CHECK(k->registers == 24);  // the notes do not disturb the rest of the report
  CHECK_FALSE(parse_ptxas_report(kReportTwoEntries, "other")->wgmma_serialized);
  // Every entry's notes, whole lines (what `flashbias gen --emit resources` prints).
  const auto notes = wgmma_serialization_notes(log);
  REQUIRE(notes.size() == 2);
  CHECK(notes[0].starts_with("ptxas info    : (C7515)"));
  CHECK(notes[1].ends_with("for the function 'other2'"));
  CHECK(wgmma_serialization_notes(kReportTwoEntries).empty());
}

TEST_CASE("ptxas report with unrecognised lines leaves fields unknown", "[cpu][runtime][resources]") {
  const auto r = parse_ptxas_report("ptxas info    : Compiling entry function 'k' for 'sm_80'\nsomething else\n", "k");
  REQUIRE(r.has_value());
  CHECK(r->registers == -1);
  CHECK(r->spill_store_bytes == -1);
  CHECK_FALSE(r->complete());
}

TEST_CASE("cubin attribute reader rejects what is not a cubin", "[cpu][runtime][resources]") {
  const std::vector<char> empty;
  CHECK_FALSE(read_cubin_attributes(empty, "k").has_value());
  std::vector<char> text(200, 'x');
  CHECK_FALSE(read_cubin_attributes(text, "k").has_value());
  // An ELF64 header whose section table points far outside the buffer.
  std::vector<char> header(64, 0);
  const char magic[] = {0x7f, 'E', 'L', 'F', 2, 1};
  std::copy(std::begin(magic), std::end(magic), header.begin());
  header[0x28] = 0x7f;  // e_shoff
  header[0x3a] = 64;    // e_shentsize
  header[0x3c] = 5;     // e_shnum
  CHECK_FALSE(read_cubin_attributes(header, "k").has_value());
  // Without a readable cubin the report alone decides.
  const KernelResources r = kernel_resources(header, kReportSm90, "k");
  CHECK(r.registers == 32);
  CHECK(r.stack_frame_bytes == 256);
}

}  // namespace flashbias
