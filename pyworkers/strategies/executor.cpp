#include "server/model/executor.hpp"

#include <Python.h>

#include "pyworkers/pool/worker.hpp"
#include "pyworkers/pool/worker_pool.hpp"

namespace gilgamesh {

std::string embedded_python_version() {
  std::string v = Py_GetVersion();  // "3.13.5 (main, ...) [GCC ...]"
  return v.substr(0, v.find(' '));
}

PythonBuild embedded_python_build() {
#ifdef Py_GIL_DISABLED
  return PythonBuild::free_threaded;
#else
  return PythonBuild::standard;
#endif
}

std::vector<Strategy> available_strategies() {
  std::vector<Strategy> out = {Strategy::subinterpreters, Strategy::threads, Strategy::processes};
#ifdef Py_GIL_DISABLED
  out.push_back(Strategy::free_threaded);
#endif
  return out;
}

std::unique_ptr<Executor> make_executor(const ServerConfig& config) {
  std::unique_ptr<WorkerFactory> factory;
  switch (config.pool.strategy) {
    case Strategy::subinterpreters:
      factory = make_subinterpreter_factory(config);
      break;
    case Strategy::threads:
      factory = make_shared_interpreter_factory(config);
      break;
    case Strategy::processes:
      factory = make_process_factory(config);
      break;
    case Strategy::free_threaded:
#ifdef Py_GIL_DISABLED
      factory = make_shared_interpreter_factory(config);
      break;
#endif
    case Strategy::automatic:
      break;
  }
  if (!factory) {
    throw StartupError(StartupError::Kind::environment,
                       "strategy '" + std::string(strategy_name(config.pool.strategy)) +
                           "' is not available in this " +
                           std::string(python_build_name(embedded_python_build())) + " build of gilgamesh");
  }
  return std::make_unique<WorkerPool>(config, std::move(factory));
}

}  // namespace gilgamesh
