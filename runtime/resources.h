// Resource usage of a compiled kernel, read without a GPU: the tuner prunes candidates that spill
// or cannot fit, and `flashbias gen --emit resources` prints them.
//
// Two sources, because neither alone is complete:
//  - the cubin's ELF .nv.info attributes (EIATTR_REGCOUNT, EIATTR_FRAME_SIZE): exactly what the
//    driver reads at load time, independent of any log format;
//  - ptxas' --verbose report in the NVRTC log: the only place that states spill stores/loads and
//    the static shared memory the program declares (the ELF .nv.shared.<fn> section size also
//    counts the 1 KiB per-CTA reservation on sm_90, so it is not the user's figure).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flashbias {

/// -1 in a field means "not reported" (the source did not state it), never a guess.
struct KernelResources {
  int registers = -1;          ///< per thread
  int spill_store_bytes = -1;  ///< summed over the entry and the non-inlined functions compiled with it
  int spill_load_bytes = -1;
  int stack_frame_bytes = -1;  ///< the entry's own frame
  int static_smem_bytes = -1;  ///< __shared__ declarations (dynamic shared memory not included)
  int barriers = -1;           ///< named barriers used
  /// ptxas serialised the entry's wgmma.mma_async instructions (each one waited for before the
  /// next issues: its "Potential Performance Loss" notes C7510-C7516, for lack of registers or
  /// for a register use inside a wgmma pipeline stage). Read from the compile log only: false for
  /// a kernel loaded from the cache or a bundle.
  bool wgmma_serialized = false;

  bool complete() const {
    return registers >= 0 && spill_store_bytes >= 0 && spill_load_bytes >= 0 && stack_frame_bytes >= 0 &&
           static_smem_bytes >= 0;
  }
  bool spills() const { return spill_store_bytes > 0 || spill_load_bytes > 0; }
  std::string str() const;  ///< "regs=96 spill_st=0 spill_ld=0 stack=0 smem=0 bar=1" (+ " wgmma_serialized")
  bool operator==(const KernelResources&) const = default;
};

/// Parse the ptxas --verbose report for `entry` out of an NVRTC program log. Fields the report
/// does not mention stay -1; nullopt if the log has no "Compiling entry function '<entry>'".
std::optional<KernelResources> parse_ptxas_report(std::string_view log, std::string_view entry);

/// The lines of a ptxas log that note a serialised wgmma pipeline ("(C7515) Potential Performance
/// Loss: wgmma.mma_async instructions are serialized ... in the function 'entry'"), every entry's.
std::vector<std::string_view> wgmma_serialization_notes(std::string_view log);

/// Per-function attributes the cubin carries for the driver.
struct CubinAttributes {
  int registers = -1;
  int frame_bytes = -1;
};

/// Read EIATTR_REGCOUNT / EIATTR_FRAME_SIZE for `entry` from a cubin (ELF64). nullopt if the
/// bytes are not an ELF64 cubin or the entry has no attributes; never reads out of bounds.
std::optional<CubinAttributes> read_cubin_attributes(std::span<const char> cubin, std::string_view entry);

/// Combine both sources: cubin attributes win for registers and frame size, the report gives
/// the rest (and registers/frame when the cubin lacks them).
KernelResources kernel_resources(std::span<const char> cubin, std::string_view log, std::string_view entry);

}  // namespace flashbias
