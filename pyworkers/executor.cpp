#include "executor.hpp"

#include <Python.h>

#include "worker.hpp"
#include "worker_pool.hpp"

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

nlohmann::json to_json(const ExecutorConfig& c) {
  return {{"strategy", c.strategy},         {"workers", c.workers},
          {"app", c.app},                   {"wsgi", c.wsgi},
          {"root_path", c.root_path},       {"max_response", c.max_response},
          {"pythonpath", c.pythonpath},
          {"max_queue", c.max_queue},       {"max_body", c.max_body},
          {"max_requests", c.max_requests}, {"max_requests_jitter", c.max_requests_jitter},
          {"max_abandoned", c.max_abandoned}, {"allow_gil", c.allow_gil},
          {"preload", c.preload},
          {"python_build", c.python_build}, {"debug", c.debug}};
}

ExecutorConfig executor_config_from_json(const nlohmann::json& j) {
  ExecutorConfig c;
  c.strategy = j.at("strategy").get<std::string>();
  c.workers = j.at("workers").get<int>();
  c.app = j.at("app").get<std::string>();
  c.wsgi = j.at("wsgi").get<bool>();
  c.root_path = j.at("root_path").get<std::string>();
  c.max_response = j.at("max_response").get<std::size_t>();
  c.pythonpath = j.at("pythonpath").get<std::vector<std::string>>();
  c.max_queue = j.at("max_queue").get<std::size_t>();
  c.max_body = j.at("max_body").get<std::size_t>();
  c.max_requests = j.at("max_requests").get<unsigned>();
  c.max_requests_jitter = j.at("max_requests_jitter").get<unsigned>();
  c.max_abandoned = j.at("max_abandoned").get<int>();
  c.allow_gil = j.at("allow_gil").get<bool>();
  c.preload = j.value("preload", false);
  c.python_build = j.at("python_build").get<std::string>();
  c.debug = j.at("debug").get<bool>();
  return c;
}

std::unique_ptr<Executor> make_executor(const ExecutorConfig& config) {
  std::unique_ptr<WorkerFactory> factory;
  if (config.strategy == "subinterpreters") {
    factory = make_subinterpreter_factory(config);
  } else if (config.strategy == "threads") {
    factory = make_shared_interpreter_factory(config);
  } else if (config.strategy == "processes") {
    factory = make_process_factory(config);
#ifdef Py_GIL_DISABLED
  } else if (config.strategy == "free-threaded") {
    factory = make_shared_interpreter_factory(config);
#endif
  } else {
    throw StartupError("strategy '" + config.strategy + "' is not available in this " +
                       embedded_python_build() + " build of gilgamesh");
  }
  return std::make_unique<WorkerPool>(config, std::move(factory));
}

}  // namespace gilgamesh
