#include "executor.hpp"

#include <Python.h>

#include "process_pool.hpp"
#include "threaded_executor.hpp"

namespace gilgamesh {

std::string embedded_python_version() {
  std::string v = Py_GetVersion();  // "3.13.5 (main, ...) [GCC ...]"
  return v.substr(0, v.find(' '));
}

std::string embedded_python_build() {
#ifdef Py_GIL_DISABLED
  return "free-threaded";
#else
  return "default";
#endif
}

std::vector<std::string> available_strategies() {
  std::vector<std::string> out = {"subinterpreters", "threads", "processes"};
#ifdef Py_GIL_DISABLED
  out.push_back("free-threaded");
#endif
  return out;
}

std::unique_ptr<Executor> make_executor(const ExecutorConfig& config) {
  if (config.strategy == "subinterpreters") return make_subinterpreter_executor(config);
  if (config.strategy == "threads") return make_shared_interpreter_executor(config);
  if (config.strategy == "processes") return make_process_executor(config);
#ifdef Py_GIL_DISABLED
  if (config.strategy == "free-threaded") return make_shared_interpreter_executor(config);
#endif
  throw StartupError("strategy '" + config.strategy + "' is not available in this " +
                     embedded_python_build() + " build of gilgamesh");
}

}  // namespace gilgamesh
