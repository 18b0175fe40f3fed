// Query-string and percent decoding, shared by the HTTP layer and Python.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gilgamesh {

// Decodes %XX escapes (and '+' as space when plus_as_space). Malformed
// escapes are kept as they are, as browsers and WSGI servers do.
std::string percent_decode(std::string_view in, bool plus_as_space);

// "a=1&b=x+y&c" -> {{"a","1"},{"b","x y"},{"c",""}}, in order, duplicates kept.
std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query);

}  // namespace gilgamesh
