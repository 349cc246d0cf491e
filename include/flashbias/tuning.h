/* FlashBias JIT, C ABI: the tuner, the kernel cache and bundles, for host programs that reach the
 * library through flashbias.h (Python's flashbias.tune / flashbias.load_bundle, C hosts).
 *
 * Part of libflashbias.so. Every function returns a flashbias_status; on failure
 * flashbias_tuning_last_error() returns a thread-local message naming the argument or the problem
 * (these calls keep their own message: flashbias_last_error() reports the calls of flashbias.h).
 * Nothing here aborts the process. None of these calls may be made inside CUDA graph capture:
 * they compile, allocate and synchronise. */
#ifndef FLASHBIAS_TUNING_H_
#define FLASHBIAS_TUNING_H_

#include "flashbias/flashbias.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tune one forward problem on CUDA device `device` (an ordinal), as `flashbias tune --problem`:
 * every candidate tile compiled, checked against the fp64 reference, timed; the run (every
 * candidate) and the winner stored in the per-user kernel cache (not with FLASHBIAS_CACHE=off).
 * Contexts created afterwards, in this process or another, take the winner for this key and
 * shape bucket; a Context that already dispatched the problem keeps the plan it has.
 *   problem:        a problem string, e.g. "b=2,h=16,nq=4096,nk=4096,d=128,r=16,mask=causal,
 *                   dtype=bf16,qb=1n1r" (generator/problem_spec.h lists the keys).
 *   strategy:       "halving" (NULL = halving) or "exhaustive".
 *   budget_seconds: per key, compilation included; 0 = unlimited; negative = the CLI's default.
 *   report_json:    if not NULL, receives a NUL-terminated JSON object describing the run (problem,
 *                   key, bucket, device, winner, winner_ms, heuristic, heuristic_ms, speedup,
 *                   counts, stored, store_warning, seconds), to free with flashbias_string_free;
 *                   NULL on failure.
 * FLASHBIAS_OK when a winner was found; FLASHBIAS_NOT_FOUND when no candidate passed (the run is
 * stored all the same and the report, if asked for, is still returned). */
FLASHBIAS_API flashbias_status flashbias_tune(int device, const char* problem, const char* strategy,
                                              double budget_seconds, char** report_json);

/* Add a bundle file (`flashbias bundle export`) to those that Contexts created from now on
 * search, after the per-user cache, FLASHBIAS_BUNDLE's files and linked-in bundles. The file is
 * opened and verified now (format version, content digest, every blob): a damaged one is
 * FLASHBIAS_CACHE_ERROR naming it and the problem, and is not added. Whether it carries the
 * device's arch is checked when a Context is created (as for FLASHBIAS_BUNDLE). Adding the same
 * file twice is a no-op. The file must stay in place for the life of the process. */
FLASHBIAS_API flashbias_status flashbias_load_bundle(const char* path);

/* Number of bundle files added with flashbias_load_bundle. */
FLASHBIAS_API int flashbias_loaded_bundle_count(void);

/* The per-user kernel cache file's path (opening it if needed), in a string to free with
 * flashbias_string_free; *path is NULL when FLASHBIAS_CACHE=off. */
FLASHBIAS_API flashbias_status flashbias_cache_path(char** path);

FLASHBIAS_API void flashbias_string_free(char* s);

/* The message of the last failed call of this header on this thread ("" if none). */
FLASHBIAS_API const char* flashbias_tuning_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* FLASHBIAS_TUNING_H_ */
