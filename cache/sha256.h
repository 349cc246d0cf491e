// SHA-256 (FIPS 180-4): the integrity hash of every stored cubin and the cache key of every kernel.
//
// Written here rather than taken from OpenSSL, nettle or gcrypt so that the library keeps no
// run-time dependency beyond libc: a bundle-only deployment (issue 7) must run in a container that
// has neither the CUDA toolkit nor a crypto library, and the project links SQLite statically for
// the same reason. The hash guards against corruption and truncation; protection against a
// deliberate attacker comes from the 0700 cache directory (whoever can write the database can
// also rewrite the stored hash).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace flashbias {

/// Incremental SHA-256: update() any number of times, then digest() once.
class Sha256 {
 public:
  Sha256() noexcept;
  /// Feed `n` bytes. Calling update after digest() is a logic error (it throws flashbias::Error).
  void update(const void* data, std::size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  /// Finish and return the 32-byte digest. The object is spent afterwards.
  std::array<std::uint8_t, 32> digest();
  /// Finish and return the digest as 64 lowercase hex characters.
  std::string hex_digest();

 private:
  void compress(const std::uint8_t* block) noexcept;

  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> buffer_{};
  std::size_t buffered_ = 0;
  std::uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

/// One-shot SHA-256 of `n` bytes at `data`.
std::array<std::uint8_t, 32> sha256(const void* data, std::size_t n);

/// SHA-256 of `s` as 64 lowercase hex characters.
std::string sha256_hex(std::string_view s);

/// SHA-256 of `n` bytes at `data` as 64 lowercase hex characters.
std::string sha256_hex(const void* data, std::size_t n);

/// Lowercase hex of a digest.
std::string to_hex(const std::array<std::uint8_t, 32>& digest);

}  // namespace flashbias
