// FLASHBIAS_KERNEL(direction, family): marks a class template as a kernel entry of the template
// manifest (templates/README.md). The manifest tool (tools/manifest) defines
// FLASHBIAS_MANIFEST_TOOL while it parses the templates and finds the entries by this annotation;
// NVRTC (and any other compiler) sees nothing, so the templates stay plain C++.
//
//   template <typename Element, int kBlockM = 128, ...>
//   struct FLASHBIAS_KERNEL("fwd", "sm80") FwdKernel { using Knobs = FwdKnobs; ... };
//
// direction and family are identifiers ("fwd"/"bwd", "sm80"/"sm90"): the generated header puts
// the entry's data under flashbias::manifest::<family>::<direction>.
#pragma once

#if defined(FLASHBIAS_MANIFEST_TOOL)
#define FLASHBIAS_KERNEL(direction, family) [[clang::annotate("flashbias.kernel:" direction ":" family)]]
#else
#define FLASHBIAS_KERNEL(direction, family)
#endif
