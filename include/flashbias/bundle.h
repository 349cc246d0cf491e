/* Precompiled kernel bundles linked into an application (issue 7).
 *
 * `flashbias bundle export ... --emit-cpp bundle.cpp` writes a C++ source that embeds a bundle's
 * bytes and calls flashbias_register_bundle() from a static initialiser, so that linking the
 * object in is all an application does. Registration only records the pointer: the bytes are
 * opened (zero-copy, read-only, every blob and the content digest verified) when the first
 * Context is created for a device, and a damaged or wrong-version image is refused then with a
 * clear error. Contexts then look kernels and tuned tiles up in: the per-user cache, bundles
 * (FLASHBIAS_BUNDLE paths first, then embedded ones, in registration order), then NVRTC (by
 * policy). */
#ifndef FLASHBIAS_BUNDLE_H
#define FLASHBIAS_BUNDLE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Register a bundle image that lives for the whole process (e.g. a static array). `name` (may be
 * NULL) appears in logs and errors. Safe to call from static initialisers, before main. Returns 0,
 * or -1 when data is NULL or size is 0. Not copied: the bytes must outlive every Context. */
int flashbias_register_bundle(const void* data, size_t size, const char* name);

/* Number of bundle images registered so far. */
size_t flashbias_registered_bundle_count(void);

#ifdef __cplusplus
}
#endif

#endif /* FLASHBIAS_BUNDLE_H */
