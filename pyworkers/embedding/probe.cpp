#include "pyworkers/embedding/probe.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "pyworkers/apps/asgi_app.hpp"
#include "pyworkers/apps/python_app.hpp"
#include "pyworkers/embedding/python_runtime.hpp"
#include "pyworkers/processes/zygote.hpp"

extern char** environ;

namespace gilgamesh {

namespace {

using Outcome = ProbeResult::Outcome;
namespace fs = std::filesystem;

constexpr double kRateSeconds = 0.5;      // per --request, after one warm-up call
constexpr std::size_t kOutputTail = 4096;  // of a dead child's output, for the detail

std::string mode_name(ProbeMode m) {
  return m == ProbeMode::subinterpreter ? "subinterpreter" : "main_interpreter";
}

constexpr const char* kSinglePhase = "single-phase init";
constexpr const char* kNoOwnGil = "no per-interpreter GIL";

// Why CPython (or gilgamesh_api's diagnostics) refused a module, in a few words.
std::string why_refused(const std::string& reason) {
  if (reason.find("subinterpreters") != std::string::npos) return kSinglePhase;
  if (reason.find("GLIBC_") != std::string::npos) {
    const auto at = reason.find("GLIBC_");
    std::string version = reason.substr(at + 6, reason.find_first_not_of("0123456789.", at + 6) - at - 6);
    return "needs glibc " + version;
  }
  if (reason.find("cannot open shared object file") != std::string::npos) return "missing shared library";
  if (reason.find("is an extension built for") != std::string::npos) return "built for another Python";
  if (reason.find("No module named") != std::string::npos) return "not installed (not on the path)";
  std::string first = reason.substr(0, reason.find('\n'));
  return first.size() > 200 ? first.substr(0, 200) + "..." : first;
}

bool is_subinterpreter_refusal(const std::string& text) {
  return text.find("does not support loading in subinterpreters") != std::string::npos ||
         text.find("not compatible with subinterpreters") != std::string::npos ||
         // A single-phase init run in the main interpreter for a sub-interpreter (3.13;
         // the bundled build's patch 0002 words it so): what failed there may only be the
         // main interpreter's missing path, so the main interpreter's own import decides.
         text.find("failed in the main interpreter") != std::string::npos;
}

// --- the child ------------------------------------------------------------------

std::int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::int64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return -1;
  return resident * sysconf(_SC_PAGESIZE);
}

void write_line(const std::string& line) {
  std::string text = line + "\n";
  const char* p = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(kProbeFd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

// A gilgamesh.<name>(args) call whose result is JSON text, parsed. With the GIL.
nlohmann::json call_api_json(const char* name, const char* format = nullptr, const char* arg = nullptr) {
  py::Ref api = py::Ref::steal(PyImport_ImportModule("gilgamesh"));
  if (!api) throw StartupError("import gilgamesh: " + py::fetch_error_summary());
  py::Ref out = py::Ref::steal(format ? PyObject_CallMethod(api.get(), name, format, arg)
                                      : PyObject_CallMethod(api.get(), name, nullptr));
  if (!out) throw StartupError(std::string(name) + ": " + py::fetch_error_summary());
  return nlohmann::json::parse(py::to_string(out.get()), nullptr, false);
}

// gilgamesh._last_import_error as (module, message), if the app's import set it.
std::optional<std::pair<std::string, std::string>> last_import_error() {
  py::Ref api = py::Ref::steal(PyImport_ImportModule("gilgamesh"));
  if (!api) {
    PyErr_Clear();
    return std::nullopt;
  }
  py::Ref last = py::Ref::steal(PyObject_GetAttrString(api.get(), "_last_import_error"));
  if (!last || !PyTuple_Check(last.get()) || PyTuple_GET_SIZE(last.get()) != 2) {
    PyErr_Clear();
    return std::nullopt;
  }
  return std::make_pair(py::to_string(PyTuple_GET_ITEM(last.get(), 0)),
                        py::to_string(PyTuple_GET_ITEM(last.get(), 1)));
}

std::vector<std::string> module_files() {
  auto files = call_api_json("_module_files");
  std::vector<std::string> out;
  if (files.is_array()) {
    for (const auto& f : files) out.push_back(f.get<std::string>());
  }
  return out;
}

// An ASGI app's requests, one at a time, through the server's own Python half
// (_gilgamesh_asgi.DirectCaller: the scope a worker builds, the request's task on an
// event loop), after the app's lifespan startup as a worker runs it.
class AsgiCaller {
 public:
  AsgiCaller(const AsgiApp& app, const AppOptions& options) {
    py::Ref adapter = py::Ref::steal(PyImport_ImportModule("_gilgamesh_asgi"));
    py::Ref type = adapter ? py::Ref::steal(PyObject_GetAttrString(adapter.get(), "DirectCaller")) : py::Ref();
    const std::string lifespan = nlohmann::json(options.lifespan).get<std::string>();
    caller_ = type ? py::Ref::steal(PyObject_CallFunction(type.get(), "Oss", app.callable(), lifespan.c_str(),
                                                          options.root_path.c_str()))
                   : py::Ref();
    py::Ref why = caller_ ? py::Ref::steal(PyObject_CallMethod(caller_.get(), "startup", nullptr)) : py::Ref();
    if (!why) {
      broken_ = py::fetch_error_summary();
    } else if (why.get() != Py_None) {
      broken_ = py::to_string(why.get());  // "lifespan startup failed: ...", as the server says it
    }
  }
  ~AsgiCaller() {
    py::Ref closed = caller_ ? py::Ref::steal(PyObject_CallMethod(caller_.get(), "close", nullptr)) : py::Ref();
    if (!closed) PyErr_Clear();
  }

  // Why no request can be made (the startup failed), or empty.
  const std::string& broken() const { return broken_; }

  // The status the app answered; throws StartupError with what went wrong in the adapter.
  int call(const std::string& method, const std::string& target) {
    py::Ref got = py::Ref::steal(PyObject_CallMethod(caller_.get(), "call", "ss", method.c_str(), target.c_str()));
    if (!got || !PyTuple_Check(got.get()) || PyTuple_GET_SIZE(got.get()) != 2) {
      throw StartupError(got ? "the ASGI adapter answered no (status, error)" : py::fetch_error_summary());
    }
    const long status = PyLong_AsLong(PyTuple_GET_ITEM(got.get(), 0));
    if (status == -1 && PyErr_Occurred()) throw StartupError(py::fetch_error_summary());
    return static_cast<int>(status);
  }

 private:
  py::Ref caller_;
  std::string broken_;
};

// Times each of request.requests ("METHOD /path?query") for kRateSeconds on one thread,
// in this interpreter, no HTTP: a route app's handler as a worker calls it, an ASGI app as
// its loop runs it; then the module globals of the app's own modules they changed. With
// the GIL of the interpreter that loaded `app`; `before` is the set of module names from
// before the app's import.
void measure_requests(PythonApp& app, PyObject* before, const ProbeRequest& request,
                      const RouteResolver& resolve, ProbeResult& result) {
  if (request.requests.empty()) return;
  py::Ref api = py::Ref::steal(PyImport_ImportModule("gilgamesh"));
  py::Ref modules = api ? py::Ref::steal(PyObject_CallMethod(api.get(), "_app_modules", "O", before))
                        : py::Ref();
  py::Ref snapshot = modules ? py::Ref::steal(PyObject_CallMethod(api.get(), "_globals_snapshot", "O",
                                                                  modules.get()))
                             : py::Ref();
  if (!snapshot) PyErr_Clear();
  const auto* asgi_app = dynamic_cast<const AsgiApp*>(&app);
  std::optional<AsgiCaller> asgi;
  if (asgi_app != nullptr) asgi.emplace(*asgi_app, request.config.app);
  for (const std::string& line : request.requests) {
    RequestRate rate;
    rate.request = line;
    std::istringstream words(line);
    std::string method, target;
    words >> method >> target;
    if (method.empty() || target.empty() || target.front() != '/') {
      rate.error = "a request is 'METHOD /path', got '" + line + "'";
      result.rates.push_back(rate);
      continue;
    }
    std::function<int()> once;
    HttpRequestData req;
    std::optional<ResolvedRoute> route;
    if (asgi) {
      rate.error = asgi->broken();
      once = [&] { return asgi->call(method, target); };
    } else {
      req.method = method;
      req.target = target;
      const auto q = target.find('?');
      req.path = target.substr(0, q);
      req.query_string = q == std::string::npos ? "" : target.substr(q + 1);
      req.request_id = "probe";
      req.headers = {{"Host", "localhost"}};
      req.remote_addr = "127.0.0.1";
      req.server_addr = "127.0.0.1";
      req.server_port = 80;
      try {
        route = resolve(app.routes(), method, req.path);
      } catch (const std::exception& e) {
        rate.error = e.what();
      }
      if (!route && rate.error.empty()) rate.error = "no route of the app answers " + method + " " + req.path;
      if (route) req.path_params = route->params;
      once = [&] { return app.handle(route->route_index, req).status; };
    }
    if (!rate.error.empty()) {
      result.rates.push_back(rate);
      continue;
    }
    try {
      rate.status = once();  // warm-up
      const auto start = Clock::now();
      std::size_t calls = 0;
      double elapsed = 0;
      do {
        once();
        ++calls;
        elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      } while (elapsed < kRateSeconds && calls < 1000000);
      rate.per_second = calls / elapsed;
    } catch (const StartupError& e) {
      rate.error = e.what();
    }
    result.rates.push_back(rate);
  }
  asgi.reset();  // the lifespan shutdown, before the globals are compared
  if (snapshot) {
    py::Ref changed = py::Ref::steal(
        PyObject_CallMethod(api.get(), "_changed_globals", "OO", modules.get(), snapshot.get()));
    if (changed && PyList_Check(changed.get())) {
      for (Py_ssize_t i = 0; i < PyList_GET_SIZE(changed.get()); ++i) {
        result.shared_state.push_back(py::to_string(PyList_GET_ITEM(changed.get(), i)));
      }
    }
    PyErr_Clear();
  }
}

// Why an own-GIL sub-interpreter refuses the extension module `name`, from the
// PyModuleDef it has in the main interpreter (attached), where it loaded: the old
// single-phase init, or a multi-phase init that does not declare
// Py_MOD_PER_INTERPRETER_GIL_SUPPORTED (Cython's default: lxml, uvloop, multidict).
// CPython's ImportError says the same words for both.
std::string own_gil_refusal(const std::string& name) {
  PyObject* modules = PySys_GetObject("modules");  // borrowed
  PyObject* module = modules && PyDict_Check(modules) ? PyDict_GetItemString(modules, name.c_str()) : nullptr;
  if (module == nullptr || !PyModule_Check(module)) return kSinglePhase;
  PyModuleDef* def = PyModule_GetDef(module);
  if (def == nullptr) {
    PyErr_Clear();
    return kSinglePhase;
  }
  if (def->m_slots == nullptr) return kSinglePhase;
  return kNoOwnGil;
}

// Loads the app in the current interpreter (attached), as a worker would, and
// measures it. Throws StartupError as PythonApp::load does.
std::unique_ptr<PythonApp> load_and_measure(const LoadContext& context, const ProbeRequest& request,
                                            const RouteResolver& resolve, ProbeResult& result,
                                            std::int64_t memory_base) {
  py::Ref sys_modules = py::Ref::borrow(PySys_GetObject("modules"));
  py::Ref before = py::Ref::steal(sys_modules ? PySet_New(sys_modules.get()) : PySet_New(nullptr));
  const auto start = Clock::now();
  std::unique_ptr<PythonApp> app = PythonApp::load(request.config.app, context);
  result.import_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const std::int64_t after = resident_bytes();
  if (memory_base >= 0 && after >= 0) result.memory_bytes = std::max<std::int64_t>(0, after - memory_base);
  result.gil_enabled = PythonApp::gil_enabled();
  result.gil_warnings = app->gil_warnings();
  measure_requests(*app, before.get(), request, resolve, result);
  return app;
}

// After the app was refused by a sub-interpreter: every C extension of it that an
// isolated sub-interpreter refuses. Called attached to the main thread state,
// with the app imported in the main interpreter; returns attached to it again.
std::vector<ModuleProblem> refused_extensions(PyThreadState* main_ts) {
  const std::string extensions = call_api_json("_extension_modules").dump();
  const PyInterpreterConfig config = isolated_interpreter_config();
  PyThreadState* sub = nullptr;
  if (PyStatus_Exception(Py_NewInterpreterFromConfig(&sub, &config))) return {};
  nlohmann::json refused;
  try {
    refused = call_api_json("_refused_extensions", "s", extensions.c_str());
  } catch (const StartupError&) {
    PyErr_Clear();
  }
  PyEval_SaveThread();
  PyEval_RestoreThread(main_ts);
  std::vector<ModuleProblem> out;
  if (refused.is_array()) {
    for (const auto& r : refused) {
      std::string name = r.at(0).get<std::string>();
      std::string why = why_refused(r.at(1).get<std::string>());
      if (why == kSinglePhase) why = own_gil_refusal(name);
      out.push_back({std::move(name), std::move(why)});
    }
  }
  return out;
}

std::string refusal_message(const ProbeRequest& request, const std::vector<ModuleProblem>& problems) {
  std::string msg = "cannot load app '" + request.config.app.target + "' under strategy " +
                    std::string(strategy_name(request.config.pool.strategy)) + ": ";
  const bool one = problems.size() == 1;
  // Every refused module of one kind: that kind's phrase, one or many. Kinds mixed: each group named.
  struct Phrase {
    const char* why;
    const char* one;
    const char* many;
  };
  static constexpr Phrase kPhrases[] = {
      {kNoOwnGil,
       "a C extension that does not declare support for a per-interpreter GIL, which own-GIL sub-interpreters refuse",
       "C extensions that do not declare support for a per-interpreter GIL, which own-GIL sub-interpreters refuse"},
      {kSinglePhase, "a single-phase-init C extension, which sub-interpreters refuse",
       "single-phase-init C extensions, which sub-interpreters refuse"},
  };
  const std::string& why = problems.front().why;
  const bool uniform =
      std::all_of(problems.begin(), problems.end(), [&](const ModuleProblem& p) { return p.why == why; });
  const auto phrase =
      std::find_if(std::begin(kPhrases), std::end(kPhrases), [&](const Phrase& p) { return why == p.why; });
  if (uniform && phrase != std::end(kPhrases)) {
    msg += problem_modules(problems) + ": " + (one ? phrase->one : phrase->many);
  } else {
    msg += "C extensions that own-GIL sub-interpreters refuse: " + describe_problems(problems);
  }
  msg += (one ? "; it loads under " : "; they load under ") + strategies_instead();
  std::string all;
  for (const auto& p : problems) all += p.module + " ";
  return msg + known_refusal_hint(all);
}

// The probe's context: the strategy's, with every import begun written to the probe's fd.
LoadContext traced_context(const ProbeRequest& request) {
  LoadContext context = load_context(request.config, request.mode == ProbeMode::main_interpreter &&
                                                         request.config.pool.strategy != Strategy::processes);
  context.trace_imports_fd = kProbeFd;
  return context;
}

void record_failure(const StartupError& e, ProbeResult& result) {
  result.outcome = Outcome::failed;
  result.message = e.what();
  result.detail = e.detail();
}

// In a fresh isolated sub-interpreter (attached to main_ts on entry and on
// return): the app's import, measured. True when the sub-interpreter refused it.
bool load_in_subinterpreter(PyThreadState* main_ts, const ProbeRequest& request, const RouteResolver& resolve,
                            ProbeResult& result, std::vector<std::string>& files) {
  const std::int64_t base = resident_bytes();
  const PyInterpreterConfig config = isolated_interpreter_config();
  PyThreadState* sub = nullptr;
  PyStatus status = Py_NewInterpreterFromConfig(&sub, &config);
  if (PyStatus_Exception(status)) {
    result.outcome = Outcome::failed;
    result.message = std::string("cannot create a sub-interpreter: ") + (status.err_msg ? status.err_msg : "?");
    return false;
  }
  bool refused = false;
  try {
    load_and_measure(traced_context(request), request, resolve, result, base)->release();
    result.outcome = Outcome::loads;
  } catch (const StartupError& e) {
    record_failure(e, result);
    refused = is_subinterpreter_refusal(result.message) || is_subinterpreter_refusal(result.detail);
    if (auto last = last_import_error()) {
      result.problems.push_back({last->first, why_refused(last->second)});
    }
  }
  for (auto& f : module_files()) files.push_back(std::move(f));
  PyEval_SaveThread();  // leaves the sub-interpreter (and its GIL)
  PyEval_RestoreThread(main_ts);
  return refused;
}

// After a sub-interpreter refused the app: the main interpreter's import says
// which extensions (all of them, by name), or, when it fails there too, the
// real error (a missing glibc version, say). Attached to main_ts.
void explain_refusal(PyThreadState* main_ts, const ProbeRequest& request, ProbeResult& result) {
  result.outcome = Outcome::refused;
  bool main_loads = request.config.pool.preload;
  if (!main_loads) {
    try {
      PythonApp::load(request.config.app, traced_context(request))->release();  // records who imports each
      main_loads = true;
    } catch (const StartupError& e) {
      result.message = e.what();
      result.detail = e.detail();
      if (auto last = last_import_error()) {
        result.problems = {{last->first, why_refused(last->second + "; " + result.message)}};
      }
    }
  }
  if (!main_loads) return;
  auto all = refused_extensions(main_ts);
  if (!all.empty()) {
    result.problems = std::move(all);
    result.message = refusal_message(request, result.problems);
  }
}

void probe_subinterpreter(PythonRuntime& runtime, const ProbeRequest& request, const RouteResolver& resolve,
                          ProbeResult& result) {
  PyThreadState* main_ts = runtime.main_thread_state();
  PyEval_RestoreThread(main_ts);
  std::vector<std::string> files;
  if (request.config.pool.preload) {
    try {
      PythonApp::load(request.config.app, traced_context(request))->release();
    } catch (const StartupError& e) {
      record_failure(e, result);
      PyEval_SaveThread();
      return;
    }
    files = module_files();
  }
  if (load_in_subinterpreter(main_ts, request, resolve, result, files)) explain_refusal(main_ts, request, result);
  PyEval_SaveThread();
  const nlohmann::json loaded = files;
  write_line("files " + loaded.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// Under processes, an ASGI app's worker processes run uvloop where they can import it
// (--loop auto): what the zygote would choose, uvloop imported as it would import it.
void record_event_loop(AppOptions app, ProbeResult& result) {
  if (app.kind != AppKind::asgi) return;
  app.loop = EventLoop::automatic;
  const EventLoopChoice choice = choose_event_loop(app);
  result.event_loop = choice.loop == EventLoop::uvloop ? "uvloop" : "asyncio";
  result.uvloop_version = choice.uvloop_version;
  result.uvloop_error = choice.uvloop_error;
}

void probe_main_interpreter(PythonRuntime& runtime, const ProbeRequest& request,
                            const RouteResolver& resolve, ProbeResult& result) {
  py::AttachedScope attached(runtime.main_thread_state());
  const std::int64_t base = resident_bytes();
  try {
    load_and_measure(traced_context(request), request, resolve, result, base)->release();
    result.outcome = Outcome::loads;
    // A process worker is a whole interpreter with the app: count the base too.
    if (request.config.pool.strategy == Strategy::processes) {
      record_event_loop(request.config.app, result);
      result.memory_bytes = resident_bytes();
    }
  } catch (const StartupError& e) {
    record_failure(e, result);
    if (auto last = last_import_error()) {
      result.problems.push_back({last->first, why_refused(last->second + "; " + result.message)});
    }
  }
  if (result.outcome == Outcome::loads && result.gil_enabled && request.config.pool.strategy == Strategy::free_threaded) {
    std::string who = result.gil_warnings.empty() ? std::string("a C extension") : result.gil_warnings.front();
    result.problems.push_back({who, "GIL re-enabled (no Py_mod_gil)"});
  }
  nlohmann::json files = module_files();
  write_line("files " + files.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// --- the parent -----------------------------------------------------------------

std::string cache_dir() {
  const char* set = getenv("GILGAMESH_PROBE_CACHE");
  if (set && *set) return std::string(set) == "off" ? std::string() : std::string(set);
  const char* xdg = getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/gilgamesh/probe";
  const char* home = getenv("HOME");
  if (home && *home) return std::string(home) + "/.cache/gilgamesh/probe";
  return {};
}

// The environment, less what changes between two starts of the same server
// without changing what Python imports.
nlohmann::json environment_key() {
  static const std::set<std::string> kVolatile = {
      "PYTEST_CURRENT_TEST", "OLDPWD", "PWD", "SHLVL", "_", "GILGAMESH_SERVER_PID",
      "GILGAMESH_HANDED_OVER", "GILGAMESH_NO_SIBLING_VERSION", "GILGAMESH_PORT", "TERM", "COLUMNS", "LINES"};
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    const auto eq = entry.find('=');
    std::string name = entry.substr(0, eq);
    if (kVolatile.count(name)) continue;
    env[name] = eq == std::string::npos ? "" : entry.substr(eq + 1);
  }
  return env;
}

nlohmann::json stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {path, -1, -1};
  const std::int64_t ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return {path, ns, static_cast<std::int64_t>(st.st_size)};
}

std::string fnv1a(const std::string& text) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

nlohmann::json cache_key(const std::string& binary, const ProbeRequest& request) {
  std::error_code ec;
  const auto cwd = fs::current_path(ec);
  return {{"binary", binary},
          {"mode", mode_name(request.mode)},
          {"strategy", request.config.pool.strategy},
          {"app", request.config.app.target},
          {"kind", request.config.app.kind},
          {"preload", request.config.pool.preload},
          {"pythonpath", request.config.app.pythonpath},
          {"lifespan", request.config.app.lifespan},
          {"root_path", request.config.app.root_path},
          {"requests", request.requests},
          {"cwd", ec ? std::string() : cwd.string()},
          {"environment", environment_key()}};
}

std::optional<ProbeResult> cache_lookup(const std::string& dir, const nlohmann::json& key) {
  if (dir.empty()) return std::nullopt;
  std::ifstream in(dir + "/" + fnv1a(key.dump()) + ".json");
  if (!in) return std::nullopt;
  nlohmann::json entry = nlohmann::json::parse(in, nullptr, false);
  if (entry.is_discarded() || entry.value("key", nlohmann::json()) != key) return std::nullopt;
  try {
    for (const auto& s : entry.at("stamps")) {
      if (stamp(s.at(0).get<std::string>()) != s) return std::nullopt;
    }
    ProbeResult r = ProbeResult::from_json(entry.at("result"));
    r.cached = true;
    return r;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The cache keeps the kMaxCacheEntries most recently written entries.
constexpr std::size_t kMaxCacheEntries = 256;

void prune_cache(const std::string& dir) {
  std::error_code ec;
  std::vector<std::pair<fs::file_time_type, fs::path>> entries;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".json") entries.emplace_back(e.last_write_time(ec), e.path());
  }
  if (entries.size() <= kMaxCacheEntries) return;
  std::sort(entries.begin(), entries.end());
  for (std::size_t i = 0; i + kMaxCacheEntries < entries.size(); ++i) fs::remove(entries[i].second, ec);
}

void cache_store(const std::string& dir, const nlohmann::json& key, const ProbeResult& result,
                 const std::vector<std::string>& files) {
  if (dir.empty()) return;
  std::error_code ec;
  fs::create_directories(dir, ec);
  nlohmann::json stamps = nlohmann::json::array();
  std::set<std::string> paths(files.begin(), files.end());
  paths.insert(key.at("binary").get<std::string>());
  for (const auto& p : key.at("pythonpath")) paths.insert(p.get<std::string>());
  if (!key.at("cwd").get<std::string>().empty()) paths.insert(key.at("cwd").get<std::string>());
  for (const auto& p : paths) {
    // A directory on the path: a module added to it could shadow one imported before.
    stamps.push_back(stamp(p));
    const fs::path parent = fs::path(p).parent_path();
    if (!parent.empty()) stamps.push_back(stamp(parent.string()));
  }
  const std::string name = dir + "/" + fnv1a(key.dump()) + ".json";
  const std::string tmp = name + "." + std::to_string(getpid()) + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) return;
    out << nlohmann::json{{"key", key}, {"stamps", stamps}, {"result", result.to_json()}}.dump(
        -1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (!out) return;
  }
  if (std::rename(tmp.c_str(), name.c_str()) != 0) std::remove(tmp.c_str());
  prune_cache(dir);
}

std::string tail_of(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return {};
  const off_t size = st.st_size;
  const off_t from = size > static_cast<off_t>(kOutputTail) ? size - static_cast<off_t>(kOutputTail) : 0;
  std::string out(static_cast<std::size_t>(size - from), '\0');
  const ssize_t n = pread(fd, out.data(), out.size(), from);
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

struct ChildRun {
  std::vector<std::string> lines;
  int wait_status = 0;
  bool timed_out = false;
  std::string output_tail;
  std::string spawn_error;
};

ChildRun run_child(const std::string& binary, const std::string& payload, std::chrono::seconds timeout) {
  ChildRun run;
  int channel[2];
  if (pipe2(channel, O_CLOEXEC) != 0) {
    run.spawn_error = std::string("pipe: ") + std::strerror(errno);
    return run;
  }
  int output = ::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (output < 0) output = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, channel[1], kProbeFd);
  if (output >= 0) {
    posix_spawn_file_actions_adddup2(&actions, output, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, output, STDERR_FILENO);
  }
  posix_spawn_file_actions_addclosefrom_np(&actions, kProbeFd + 1);
  posix_spawnattr_t attr;
  init_spawn_attributes(attr);
  const char* argv[] = {binary.c_str(), kProbeFlag, payload.c_str(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, binary.c_str(), &actions, &attr, const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(channel[1]);
  if (rc != 0) {
    ::close(channel[0]);
    if (output >= 0) ::close(output);
    run.spawn_error = "cannot run " + binary + ": " + std::strerror(rc);
    return run;
  }
  const auto deadline = Clock::now() + timeout;
  std::string pending;
  char buf[8192];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      run.timed_out = true;
      break;
    }
    pollfd p{channel[0], POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const ssize_t n = ::read(channel[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the child closed its end: it is leaving
    pending.append(buf, static_cast<std::size_t>(n));
    std::size_t at;
    while ((at = pending.find('\n')) != std::string::npos) {
      run.lines.push_back(pending.substr(0, at));
      pending.erase(0, at + 1);
    }
  }
  ::close(channel[0]);
  if (run.timed_out) kill(pid, SIGKILL);
  // It leaves right after closing its end; a child that lingers past the deadline is killed.
  for (;;) {
    const pid_t done = waitpid(pid, &run.wait_status, WNOHANG);
    if (done == pid || (done < 0 && errno != EINTR)) break;
    if (Clock::now() > deadline + std::chrono::seconds(5)) {
      kill(pid, SIGKILL);
      waitpid(pid, &run.wait_status, 0);
      run.timed_out = true;
      break;
    }
    usleep(2000);
  }
  if (output >= 0) {
    run.output_tail = tail_of(output);
    ::close(output);
  }
  return run;
}

// Which import a dead child was in: the last one begun; and when the import of a C
// extension had failed before it, that extension. CPython 3.13.5 mishandles the exception
// of a failed single-phase PyInit in a sub-interpreter (gh-144601) and dies later, in
// whatever is imported next (MarkupSafe's fallback after its speedups, `ast` for a
// traceback): the extension is the one to blame, and the message names both.
template <typename Events>
void blame_import(const Events& events, ProbeResult& result) {
  const auto last_begin = std::find_if(events.rbegin(), events.rend(), [](const auto& e) { return !e.failed; });
  const auto last_failed = std::find_if(events.rbegin(), events.rend(), [](const auto& e) { return e.failed; });
  if (last_begin == events.rend()) return;
  if (last_failed != events.rend()) {
    result.last_import = last_failed->name;
    result.import_chain = last_failed->chain;
    result.died_importing = last_begin->name;
    return;
  }
  result.last_import = last_begin->name;
  result.import_chain = last_begin->chain;
}

}  // namespace

const char* ProbeResult::outcome_name(Outcome o) {
  switch (o) {
    case Outcome::loads: return "loads";
    case Outcome::refused: return "refused";
    case Outcome::failed: return "failed";
    case Outcome::crashed: return "crashed";
    case Outcome::timed_out: return "timed_out";
  }
  return "?";
}

nlohmann::json ProbeResult::to_json() const {
  nlohmann::json problems_json = nlohmann::json::array();
  for (const auto& p : problems) problems_json.push_back({{"module", p.module}, {"why", p.why}});
  nlohmann::json rates_json = nlohmann::json::array();
  for (const auto& r : rates) {
    rates_json.push_back({{"request", r.request}, {"status", r.status}, {"per_second", r.per_second},
                          {"error", r.error}});
  }
  return {{"outcome", outcome_name(outcome)}, {"message", message}, {"detail", detail},
          {"problems", problems_json}, {"last_import", last_import}, {"import_chain", import_chain},
          {"died_importing", died_importing},
          {"wait_status", wait_status}, {"import_seconds", import_seconds},
          {"memory_bytes", memory_bytes}, {"gil_enabled", gil_enabled}, {"gil_warnings", gil_warnings},
          {"rates", rates_json}, {"shared_state", shared_state}, {"python", python},
          {"event_loop", event_loop}, {"uvloop_version", uvloop_version}, {"uvloop_error", uvloop_error}};
}

ProbeResult ProbeResult::from_json(const nlohmann::json& j) {
  ProbeResult r;
  const std::string outcome = j.value("outcome", "failed");
  for (Outcome o : {Outcome::loads, Outcome::refused, Outcome::failed, Outcome::crashed, Outcome::timed_out}) {
    if (outcome == outcome_name(o)) r.outcome = o;
  }
  r.message = j.value("message", "");
  r.detail = j.value("detail", "");
  for (const auto& p : j.value("problems", nlohmann::json::array())) {
    r.problems.push_back({p.value("module", ""), p.value("why", "")});
  }
  r.last_import = j.value("last_import", "");
  r.import_chain = j.value("import_chain", std::vector<std::string>{});
  r.died_importing = j.value("died_importing", "");
  r.wait_status = j.value("wait_status", "");
  r.import_seconds = j.value("import_seconds", 0.0);
  r.memory_bytes = j.value("memory_bytes", std::int64_t{-1});
  r.gil_enabled = j.value("gil_enabled", true);
  r.gil_warnings = j.value("gil_warnings", std::vector<std::string>{});
  for (const auto& x : j.value("rates", nlohmann::json::array())) {
    r.rates.push_back({x.value("request", ""), x.value("status", 0), x.value("per_second", 0.0),
                       x.value("error", "")});
  }
  r.shared_state = j.value("shared_state", std::vector<std::string>{});
  r.event_loop = j.value("event_loop", "");
  r.uvloop_version = j.value("uvloop_version", "");
  r.uvloop_error = j.value("uvloop_error", "");
  r.python = j.value("python", "");
  return r;
}

namespace {

// `names` joined; past five, the first three and how many more, with the package
// they share ("falcon.app, falcon.errors, falcon.uri and 35 more falcon modules").
std::string brief_names(const std::vector<std::string>& names) {
  constexpr std::size_t kAll = 5, kShown = 3;
  std::string out;
  for (std::size_t i = 0; i < names.size() && (names.size() <= kAll || i < kShown); ++i) {
    out += (out.empty() ? "" : ", ") + names[i];
  }
  if (names.size() <= kAll) return out;
  const std::string top = names.front().substr(0, names.front().find('.'));
  const bool shared = std::all_of(names.begin(), names.end(), [&](const std::string& n) {
    return n.substr(0, n.find('.')) == top;
  });
  return out + fmt::format(" and {} more", names.size() - kShown) + (shared ? " " + top + " modules" : "");
}

}  // namespace

std::string problem_modules(const std::vector<ModuleProblem>& problems) {
  std::vector<std::string> names;
  for (const auto& p : problems) names.push_back(p.module);
  return brief_names(names);
}

std::string describe_problems(const std::vector<ModuleProblem>& problems, ProblemStyle style) {
  std::vector<std::pair<std::string, std::vector<std::string>>> by_why;  // in order of first appearance
  for (const auto& p : problems) {
    auto at = std::find_if(by_why.begin(), by_why.end(), [&](const auto& g) { return g.first == p.why; });
    if (at == by_why.end()) at = by_why.insert(by_why.end(), {p.why, {}});
    at->second.push_back(p.module);
  }
  std::string out;
  for (const auto& [why, names] : by_why) {
    out += style == ProblemStyle::parenthesized ? (out.empty() ? "" : ", ") + brief_names(names) + " (" + why + ")"
                                                : (out.empty() ? "" : "; ") + brief_names(names) + ": " + why;
  }
  return out;
}

ProbeResult probe_app(const std::string& binary, const ProbeRequest& request, std::chrono::seconds timeout,
                      bool use_cache) {
  const auto start = Clock::now();
  const std::string dir = use_cache ? cache_dir() : std::string();
  const nlohmann::json key = cache_key(binary, request);
  if (auto hit = cache_lookup(dir, key)) {
    hit->probe_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return *hit;
  }
  const nlohmann::json config = request.config;
  const std::string payload =
      nlohmann::json{{"mode", mode_name(request.mode)}, {"config", config}, {"requests", request.requests}}
          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  ChildRun run = run_child(binary, payload, timeout);

  ProbeResult result;
  std::vector<std::string> files;
  bool have_result = false;
  struct Event {
    bool failed = false;
    std::string name;
    std::vector<std::string> chain;
  };
  std::vector<Event> events;
  auto event = [](bool failed, const std::string& text) {
    Event e;
    e.failed = failed;
    const auto tab = text.find('\t');
    e.name = text.substr(0, tab);
    if (tab != std::string::npos) {
      std::istringstream chain(text.substr(tab + 1));
      for (std::string name; chain >> name;) e.chain.push_back(name);
    }
    return e;
  };
  for (const auto& line : run.lines) {
    if (line.rfind("begin ", 0) == 0) {
      events.push_back(event(false, line.substr(6)));
    } else if (line.rfind("failed ", 0) == 0) {
      events.push_back(event(true, line.substr(7)));
    } else if (line.rfind("files ", 0) == 0) {
      auto j = nlohmann::json::parse(line.substr(6), nullptr, false);
      if (j.is_array()) {
        for (const auto& f : j) files.push_back(f.get<std::string>());
      }
    } else if (line.rfind("result ", 0) == 0) {
      auto j = nlohmann::json::parse(line.substr(7), nullptr, false);
      if (!j.is_discarded()) {
        result = ProbeResult::from_json(j);
        have_result = true;
      }
    }
  }
  if (!have_result) {
    result = ProbeResult{};
    if (!run.spawn_error.empty()) {
      result.outcome = Outcome::failed;
      result.message = run.spawn_error;
    } else {
      result.outcome = run.timed_out ? Outcome::timed_out : Outcome::crashed;
      result.wait_status = run.timed_out ? "timed out after " + std::to_string(timeout.count()) + " s"
                                         : describe_wait_status(run.wait_status);
      blame_import(events, result);
      result.detail = run.output_tail;
    }
  }
  if (result.outcome != Outcome::crashed && result.outcome != Outcome::timed_out && run.spawn_error.empty()) {
    cache_store(dir, key, result, files);
  }
  result.probe_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

[[noreturn]] void probe_main(int argc, char** argv, const RouteResolver& resolve) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  ProbeResult result;
  try {
    if (argc < 3) throw StartupError("usage: gilgamesh --internal-probe JSON");
    const nlohmann::json j = nlohmann::json::parse(argv[2]);
    ProbeRequest request;
    request.mode = j.at("mode").get<std::string>() == "subinterpreter" ? ProbeMode::subinterpreter
                                                                       : ProbeMode::main_interpreter;
    request.config = j.at("config").get<ServerConfig>();
    request.requests = j.value("requests", std::vector<std::string>{});
    const bool subinterpreters = request.mode == ProbeMode::subinterpreter;
    // Never destroyed: finalizing would meet the sub-interpreters left running, and a
    // process that only probed leaves with _exit.
    PythonRuntime& runtime = *new PythonRuntime(subinterpreters ? PythonConcurrency::kSubinterpreters
                                                                : PythonConcurrency::kNone);
    result.python = embedded_python_version() + " (" + std::string(python_build_name(embedded_python_build())) + " build)";
    if (subinterpreters) {
      probe_subinterpreter(runtime, request, resolve, result);
    } else {
      probe_main_interpreter(runtime, request, resolve, result);
    }
  } catch (const std::exception& e) {
    result.outcome = Outcome::failed;
    result.message = e.what();
  }
  write_line("result " + result.to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  std::fflush(nullptr);
  _exit(0);
}

}  // namespace gilgamesh
