#include "server/model/strategy.hpp"

#include <array>
#include <utility>

namespace gilgamesh {

namespace {
constexpr std::array<std::pair<Strategy, std::string_view>, 5> kStrategies{{
    {Strategy::subinterpreters, "subinterpreters"},
    {Strategy::threads, "threads"},
    {Strategy::free_threaded, "free-threaded"},
    {Strategy::processes, "processes"},
    {Strategy::automatic, "auto"},
}};
}  // namespace

std::string_view strategy_name(Strategy s) {
  for (const auto& [value, name] : kStrategies) {
    if (value == s) return name;
  }
  return "?";
}

std::optional<Strategy> parse_strategy(std::string_view name) {
  for (const auto& [value, text] : kStrategies) {
    if (text == name) return value;
  }
  return std::nullopt;
}

std::vector<std::string> strategy_names() {
  std::vector<std::string> out;
  for (const auto& entry : kStrategies) out.emplace_back(entry.second);
  return out;
}

std::string_view python_build_name(PythonBuild b) {
  return b == PythonBuild::free_threaded ? "free-threaded" : "default";
}

std::optional<PythonBuild> parse_python_build(std::string_view name) {
  if (name == "default") return PythonBuild::standard;
  if (name == "free-threaded") return PythonBuild::free_threaded;
  return std::nullopt;
}

}  // namespace gilgamesh
