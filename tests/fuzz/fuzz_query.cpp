// Fuzz target 2: query-string and percent decoding (server/model/query.hpp), as
// the router (path) and the handlers' request.query (query) use them.
//
// Checked: nothing throws or reads out of bounds; decoding never grows the
// text (an escape is three bytes for one); input without '%' (and, for
// plus_as_space, '+') comes back unchanged; every parsed pair comes from one
// '&'-separated part of the query.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "server/model/query.hpp"

namespace {
[[noreturn]] void fail(const char* what, std::string_view input) {
  std::fprintf(stderr, "fuzz_query: %s on input of %zu bytes\n", what, input.size());
  std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  for (bool plus : {false, true}) {
    const std::string out = gilgamesh::percent_decode(in, plus);
    if (out.size() > in.size()) fail("decoded text longer than its input", in);
    if (in.find('%') == std::string_view::npos && (!plus || in.find('+') == std::string_view::npos) &&
        out != in) {
      fail("text without escapes changed", in);
    }
  }
  std::size_t parts = 1;
  for (char c : in) parts += c == '&';
  const auto pairs = gilgamesh::parse_query(in);
  if (pairs.size() > parts) fail("more pairs than '&'-separated parts", in);
  for (const auto& [key, value] : pairs) {
    if (key.size() + value.size() > in.size()) fail("a pair longer than the query", in);
  }
  return 0;
}
