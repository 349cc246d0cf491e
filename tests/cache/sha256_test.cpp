// SHA-256 against the FIPS 180-4 / NIST CAVP examples, plus padding-boundary lengths (checked
// against coreutils sha256sum) and incremental feeding at every split point.
#include <catch2/catch.hpp>

#include <string>

#include "cache/sha256.h"

using flashbias::Sha256;
using flashbias::sha256;
using flashbias::sha256_hex;

TEST_CASE("sha256 matches the FIPS 180-4 examples", "[cpu][cache][sha256]") {
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                   "mnopqrstnopqrstu") == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  const std::string million(1000000, 'a');
  CHECK(sha256_hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256 pads correctly around block boundaries", "[cpu][cache][sha256]") {
  // Lengths where the 0x80 byte and the 8-byte length just fit, just miss, or spill a block.
  const std::pair<std::size_t, const char*> cases[] = {
      {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
      {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
      {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
      {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
      {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
      {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
      {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
      {127, "c57e9278af78fa3cab38667bef4ce29d783787a2f731d4e12200270f0c32320a"},
      {128, "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"},
  };
  for (const auto& [n, hex] : cases) {
    INFO("length " << n);
    CHECK(sha256_hex(std::string(n, 'a')) == hex);
  }
}

TEST_CASE("sha256 incremental equals one-shot at every split", "[cpu][cache][sha256]") {
  std::string msg;
  for (int i = 0; i < 200; ++i) msg += char('A' + (i * 7) % 26);
  const auto whole = sha256(msg.data(), msg.size());
  for (std::size_t split = 0; split <= msg.size(); ++split) {
    Sha256 h;
    h.update(msg.data(), split);
    h.update(msg.data() + split, msg.size() - split);
    REQUIRE(h.digest() == whole);
  }
  // Byte by byte, too.
  Sha256 h;
  for (char c : msg) h.update(&c, 1);
  CHECK(h.digest() == whole);
}

TEST_CASE("sha256 object is single-use", "[cpu][cache][sha256]") {
  Sha256 h;
  h.update("abc");
  CHECK(h.hex_digest() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK_THROWS(h.update("more"));
  CHECK_THROWS(h.digest());
}
