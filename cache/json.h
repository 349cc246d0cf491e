// JSON forms of the cache records and reports, for `flashbias cache ... --json` and
// `flashbias bundle inspect --json`. Blobs are never serialised: a kernel shows its size and hash.
#pragma once

#include <nlohmann/json.hpp>

#include "cache/records.h"
#include "cache/store.h"

namespace flashbias::cache {

void to_json(nlohmann::json& j, const DeviceFingerprint& d);
void to_json(nlohmann::json& j, const KernelRecord& k);  ///< every field but the cubin bytes
void to_json(nlohmann::json& j, const TuningCandidate& c);
void to_json(nlohmann::json& j, const TuningRun& r);
void to_json(nlohmann::json& j, const TuningWinner& w);
void to_json(nlohmann::json& j, const WinnerEntry& e);
void to_json(nlohmann::json& j, const CacheStats& s);
void to_json(nlohmann::json& j, const VerifyReport& r);
void to_json(nlohmann::json& j, const RemovalReport& r);
void to_json(nlohmann::json& j, const ExportReport& r);

}  // namespace flashbias::cache
