#include "server/check.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <future>
#include <iostream>

#include "server/cli.hpp"
#include "server/http/router.hpp"

namespace gilgamesh {

namespace {

using Outcome = ProbeResult::Outcome;

std::string self_binary() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : self.string();
}

std::string chain_text(const ProbeResult& r) {
  if (r.import_chain.empty()) return {};
  std::string out = " (imported by ";
  for (std::size_t i = 0; i < r.import_chain.size(); ++i) out += (i ? " <- " : "") + r.import_chain[i];
  return out + ")";
}

// The probe's child died (or hung) importing the app in a sub-interpreter.
std::string crash_message(const ServerConfig& config, const ProbeResult& r,
                          const std::optional<ProbeResult>& with_preload) {
  std::string what = r.outcome == Outcome::timed_out ? "did not finish importing it" : "died";
  std::string msg = fmt::format(
      "cannot serve app '{}' under strategy subinterpreters: a disposable process importing it in a "
      "sub-interpreter {} ({})", config.app.target, what, r.wait_status);
  if (r.last_import.empty()) {
    msg += " before any import began";
  } else if (!r.died_importing.empty()) {
    msg += " during the import of " + r.died_importing + ", after the import of the C extension " +
           r.last_import + chain_text(r) + " had failed";
  } else {
    msg += " during the import of " + r.last_import + chain_text(r);
  }
  if (r.outcome == Outcome::crashed) {
    msg += fmt::format(
        ". Such a crash comes from CPython (unpatched 3.12/3.13 crash on some single-phase-init "
        "extensions imported first in a sub-interpreter: CPython gh-138045, gh-144601; gilgamesh's "
        "bundled 3.13.5 is patched; this is {}) or from the extension itself",
        embedded_python_version());
  }
  msg += ". What works: --strategy processes or --strategy threads";
  if (with_preload) {
    if (with_preload->outcome == Outcome::loads) {
      msg += "; --preload also avoids it (checked: with it the app loads in sub-interpreters)";
    } else if (with_preload->outcome == Outcome::refused) {
      msg += "; with --preload the import no longer crashes, but sub-interpreters refuse " +
             problem_modules(with_preload->problems);
    }
  }
  if (!r.detail.empty()) {
    std::string tail = r.detail;
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
    const auto cut = tail.rfind('\n', tail.size() > 600 ? tail.size() - 600 : 0);
    msg += "\n  the process's last output: " + (tail.size() > 600 && cut != std::string::npos
                                                   ? tail.substr(cut + 1) : tail);
  }
  return msg;
}

// The same, for an import in the main interpreter (threads, free-threaded).
std::string main_crash_message(const ServerConfig& config, const ProbeResult& r) {
  std::string msg = fmt::format("cannot serve app '{}' under strategy {}: a disposable process importing it "
                                "{} ({})", config.app.target, strategy_name(config.pool.strategy),
                                r.outcome == Outcome::timed_out ? "did not finish" : "died", r.wait_status);
  msg += r.last_import.empty() ? " before any import began" : " during the import of " + r.last_import + chain_text(r);
  msg += ". A C extension crashed the interpreter";
  if (config.pool.strategy == Strategy::free_threaded) {
    msg += " (on the free-threaded build, usually one built for the default build)";
  }
  msg += "; `gilgamesh check` shows which strategies and Python builds load the app";
  return msg;
}

ProbeRequest probe_request(const ServerConfig& config, ProbeMode mode, Strategy strategy,
                           std::vector<std::string> requests = {}) {
  ProbeRequest request;
  request.mode = mode;
  request.config = config;
  request.config.pool.strategy = strategy;
  request.config.pool.python_build =
      strategy == Strategy::free_threaded ? PythonBuild::free_threaded : PythonBuild::standard;
  request.requests = std::move(requests);
  return request;
}

std::string mib(std::int64_t bytes) { return fmt::format("{:.1f} MiB", bytes / 1048576.0); }

}  // namespace

RouteResolver router_resolver() {
  return [](const std::vector<RouteInfo>& routes, const std::string& method,
            const std::string& path) -> std::optional<ResolvedRoute> {
    const Router router(routes, /*dashboard=*/false);
    RouteMatch m = router.match(method, path);
    if (m.result != RouteMatch::Result::found || m.builtin != Builtin::none) return std::nullopt;
    return ResolvedRoute{m.route_index, std::move(m.params)};
  };
}

std::string build_binary(PythonBuild build) {
  const std::string self = self_binary();
  if (build == embedded_python_build()) return self;
  if (self.empty()) return {};
  auto sibling = std::filesystem::path(self).parent_path() /
                 (build == PythonBuild::free_threaded ? "gilgamesh-ft" : "gilgamesh");
  return access(sibling.c_str(), X_OK) == 0 ? sibling.string() : std::string();
}

std::optional<StartupError> guard_import(const ServerConfig& config) {
  const Strategy strategy = config.pool.strategy;
  if (strategy == Strategy::processes) return std::nullopt;  // the zygote imports it: a crash ends only that
  const bool sub = strategy == Strategy::subinterpreters;
  const ProbeRequest request =
      probe_request(config, sub ? ProbeMode::subinterpreter : ProbeMode::main_interpreter, strategy);
  const ProbeResult r = probe_app(self_binary(), request);
  spdlog::info("start-up probe: app '{}' {} in {} ({:.0f} ms{})", config.app.target, ProbeResult::outcome_name(r.outcome),
               sub ? "a sub-interpreter" : "the main interpreter", r.probe_seconds * 1000,
               r.cached ? ", cached" : "");
  switch (r.outcome) {
    case Outcome::loads:
    case Outcome::failed:  // the workers say why, as they always have
      return std::nullopt;
    case Outcome::refused:
      return StartupError(r.message, r.detail);
    case Outcome::crashed:
    case Outcome::timed_out: {
      if (!sub) return StartupError(main_crash_message(config, r));
      std::optional<ProbeResult> with_preload;
      if (!config.pool.preload && r.outcome == Outcome::crashed) {
        ProbeRequest preloaded = request;
        preloaded.config.pool.preload = true;
        with_preload = probe_app(self_binary(), preloaded);
      }
      return StartupError(crash_message(config, r, with_preload));
    }
  }
  return std::nullopt;
}

std::optional<StartupError> restart_blocker(const ServerConfig& config) {
  const Strategy strategy = config.pool.strategy;
  const bool sub = strategy == Strategy::subinterpreters;
  const ProbeResult r =
      probe_app(self_binary(), probe_request(config, sub ? ProbeMode::subinterpreter : ProbeMode::main_interpreter, strategy));
  spdlog::info("restart check: app '{}' {} in {} ({:.0f} ms{})", config.app.target, ProbeResult::outcome_name(r.outcome),
               sub ? "a sub-interpreter" : "the main interpreter", r.probe_seconds * 1000, r.cached ? ", cached" : "");
  switch (r.outcome) {
    case Outcome::loads:
      return std::nullopt;
    case Outcome::failed:
    case Outcome::refused:
      return StartupError(r.message, r.detail);
    case Outcome::crashed:
    case Outcome::timed_out:
      return StartupError(sub ? crash_message(config, r, std::nullopt) : main_crash_message(config, r));
  }
  return std::nullopt;
}

AutoChoice choose_strategy(const ServerConfig& config) {
  const ProbeResult sub =
      probe_app(self_binary(), probe_request(config, ProbeMode::subinterpreter, Strategy::subinterpreters));
  if (sub.outcome == Outcome::loads) {
    return {Strategy::subinterpreters, "the app loads in own-GIL sub-interpreters"};
  }
  std::string why;
  switch (sub.outcome) {
    case Outcome::refused: {
      why = describe_problems(sub.problems, ProblemStyle::parenthesized) +
            (sub.problems.size() == 1 ? " refuses" : " refuse") + " sub-interpreters";
      break;
    }
    case Outcome::crashed:
      why = "importing " + (sub.last_import.empty() ? std::string("the app") : sub.last_import) +
            " in a sub-interpreter crashes CPython " + embedded_python_version() + " (" + sub.wait_status + ")";
      break;
    case Outcome::timed_out:
      why = "importing the app in a sub-interpreter did not finish (" + sub.wait_status + ")";
      break;
    default: {
      std::string first = sub.message.substr(0, sub.message.find('\n'));
      why = "the app's import fails in a sub-interpreter: " + first;
      break;
    }
  }
  const ProbeResult main =
      probe_app(self_binary(), probe_request(config, ProbeMode::main_interpreter, Strategy::processes));
  if (sub.outcome == Outcome::failed && main.outcome != Outcome::loads) {
    // It fails everywhere: the default strategy's start says why.
    return {Strategy::subinterpreters, "the app does not load under any strategy; its error follows"};
  }
  return {Strategy::processes, why};
}

// --- gilgamesh check ------------------------------------------------------------

namespace {

struct Row {
  Strategy strategy;
  PythonBuild build;
  std::optional<ProbeResult> result;  // none: this build is not available
  bool shares_app = false;            // threads, free-threaded: one app object for every worker
};

bool row_loads(const Row& row) {
  if (!row.result || row.result->outcome != Outcome::loads) return false;
  // The GIL came back on a free-threaded build: it serves, but not in parallel.
  return true;
}

std::string row_problems(const Row& row) {
  if (!row.result) return std::string(python_build_name(row.build)) + " build not available";
  const ProbeResult& r = *row.result;
  switch (r.outcome) {
    case Outcome::crashed:
    case Outcome::timed_out:
      return (r.outcome == Outcome::crashed ? "crashes CPython: " : "hangs: ") +
             (r.last_import.empty() ? std::string("before any import") : r.last_import + chain_text(r)) +
             (r.died_importing.empty() ? "" : ", whose import failed (the process died importing " + r.died_importing + ")") + " (" + r.wait_status + ")";
    default: break;
  }
  std::string out = describe_problems(r.problems);
  if (out.empty() && r.outcome != Outcome::loads) out = r.message.substr(0, r.message.find('\n'));
  return out;
}

// An ASGI app's worker processes under processes: the event loop --loop auto gives them.
// Empty for the other strategies, for other apps and where the app does not load.
std::string event_loop_text(const Row& row) {
  if (row.strategy != Strategy::processes || !row_loads(row) || row.result->event_loop.empty()) return {};
  const ProbeResult& r = *row.result;
  if (r.event_loop == "uvloop") return "each worker process runs uvloop " + r.uvloop_version + " (--loop auto)";
  return "each worker process runs asyncio's event loop (--loop auto; uvloop: " + r.uvloop_error + ")";
}

nlohmann::json row_json(const Row& row) {
  nlohmann::json j = {{"strategy", row.strategy}, {"build", row.build}, {"loads", row_loads(row)}};
  if (!row.result) {
    j["outcome"] = "unavailable";
    j["problems"] = nlohmann::json::array({{{"module", ""}, {"why", row_problems(row)}}});
    j["import_seconds"] = nullptr;
    j["worker_memory_bytes"] = nullptr;
    j["rate_per_second"] = nullptr;
    j["shared_state"] = nlohmann::json::array();
    j["event_loop"] = nullptr;
    return j;
  }
  const ProbeResult& r = *row.result;
  j["outcome"] = ProbeResult::outcome_name(r.outcome);
  j["message"] = r.message;
  nlohmann::json problems = nlohmann::json::array();
  for (const auto& p : r.problems) problems.push_back({{"module", p.module}, {"why", p.why}});
  if ((r.outcome == Outcome::crashed || r.outcome == Outcome::timed_out) && problems.empty()) {
    problems.push_back({{"module", r.last_import}, {"why", row_problems(row)}});
  }
  j["problems"] = problems;
  j["gil_enabled"] = r.gil_enabled;
  j["import_seconds"] = r.outcome == Outcome::loads ? nlohmann::json(r.import_seconds) : nlohmann::json();
  j["worker_memory_bytes"] =
      row.shares_app || r.memory_bytes < 0 || r.outcome != Outcome::loads ? nlohmann::json() : nlohmann::json(r.memory_bytes);
  nlohmann::json rates = nlohmann::json::array();
  for (const auto& x : r.rates) {
    rates.push_back({{"request", x.request}, {"status", x.status}, {"per_second", x.per_second}, {"error", x.error}});
  }
  j["rates"] = rates;
  j["rate_per_second"] = r.rates.empty() || !r.rates.front().error.empty() ? nlohmann::json()
                                                                          : nlohmann::json(r.rates.front().per_second);
  j["shared_state"] = row.shares_app ? r.shared_state : std::vector<std::string>{};
  j["cached"] = r.cached;
  j["event_loop"] = event_loop_text(row).empty()
                        ? nlohmann::json()
                        : nlohmann::json{{"loop", r.event_loop}, {"uvloop_version", r.uvloop_version},
                                         {"uvloop_error", r.uvloop_error}};
  return j;
}

const Row* find_row(const std::vector<Row>& rows, Strategy strategy) {
  for (const auto& r : rows) {
    if (r.strategy == strategy) return &r;
  }
  return nullptr;
}

// Which strategy to serve with, in the order docs/benchmarks.md supports:
// subinterpreters (one process, every core), processes, free-threaded (the GIL must
// stay off; its single-thread speed is about half), threads (the GIL: one core).
nlohmann::json recommend(const std::vector<Row>& rows, const std::optional<ProbeResult>& preloaded) {
  const Row* sub = find_row(rows, Strategy::subinterpreters);
  const Row* proc = find_row(rows, Strategy::processes);
  const Row* ft = find_row(rows, Strategy::free_threaded);
  const Row* thr = find_row(rows, Strategy::threads);
  auto pick = [](const std::string& s, std::string why, std::string unlock = {}) {
    return nlohmann::json{{"strategy", s}, {"why", std::move(why)}, {"unlock", std::move(unlock)}};
  };
  if (sub && row_loads(*sub)) {
    std::string why = "the app loads in own-GIL sub-interpreters: one process runs its handlers on every "
                      "core in parallel";
    if (sub->result->memory_bytes >= 0 && proc && proc->result && proc->result->memory_bytes > 0) {
      why += fmt::format(", at about {} per extra worker against {} for a process worker",
                         mib(sub->result->memory_bytes), mib(proc->result->memory_bytes));
    }
    return pick("subinterpreters", why + "; runner-up: processes");
  }
  if (sub && sub->result && sub->result->outcome == Outcome::crashed && preloaded &&
      preloaded->outcome == Outcome::loads) {
    return pick("subinterpreters --preload",
                "without --preload, importing " + sub->result->last_import +
                    " in a sub-interpreter crashes CPython; with it the app loads there");
  }
  std::string blocked = sub ? row_problems(*sub) : std::string("no sub-interpreters in this build");
  std::string unlock;
  if (sub && sub->result && sub->result->outcome == Outcome::refused) {
    const bool one = sub->result->problems.size() == 1;
    unlock = problem_modules(sub->result->problems) + (one ? " blocks" : " block") +
             " subinterpreters: import " + (one ? "it" : "them") +
             " only where needed, with a fallback for when a sub-interpreter refuses " +
             (one ? "it" : "them") + " (as MarkupSafe does for its speedups), or use a release built "
             "for own-GIL sub-interpreters (multi-phase init that declares "
             "Py_MOD_PER_INTERPRETER_GIL_SUPPORTED)";
  }
  if (proc && row_loads(*proc)) {
    std::string why = "subinterpreters cannot serve it (" + blocked + "); processes run the app in "
                      "forked workers, in parallel on every core";
    if (proc->result->event_loop == "uvloop") why += ", each on uvloop " + proc->result->uvloop_version;
    if (ft && row_loads(*ft) && !ft->result->gil_enabled) {
      why += "; free-threaded also loads it with the GIL off, but runs single-threaded Python about 2x "
             "slower (docs/benchmarks.md)";
    }
    return pick("processes", why, unlock);
  }
  if (ft && row_loads(*ft)) return pick("free-threaded", "only the free-threaded build loads it", unlock);
  if (thr && row_loads(*thr)) return pick("threads", "only threads load it (one core: the GIL)", unlock);
  return pick("", "no strategy can load the app", unlock);
}

std::string table_text(const nlohmann::json& doc, const std::vector<Row>& rows) {
  std::vector<std::array<std::string, 7>> lines;
  lines.push_back({"strategy", "build", "loads", "import", "memory/worker", "rate", "state sharing"});
  bool have_requests = false;
  for (const auto& row : rows) {
    if (row.result && !row.result->rates.empty()) have_requests = true;
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& row = rows[i];
    const nlohmann::json& j = doc["rows"][i];
    std::array<std::string, 7> cells;
    cells[0] = strategy_name(row.strategy);
    cells[1] = python_build_name(row.build);
    cells[2] = j["loads"].get<bool>() ? (row.result && row.result->gil_enabled && row.strategy == Strategy::free_threaded
                                             ? "yes, GIL on" : "yes")
                                      : (row.result && row.result->outcome == Outcome::crashed ? "CRASH" : "no");
    cells[3] = j["import_seconds"].is_null() ? "-" : fmt::format("{:.2f} s", j["import_seconds"].get<double>());
    cells[4] = row.shares_app ? "shared" : j["worker_memory_bytes"].is_null() ? "-" : mib(j["worker_memory_bytes"].get<std::int64_t>());
    if (!j["loads"].get<bool>()) cells[4] = "-";
    cells[5] = j["rate_per_second"].is_null() ? "-" : fmt::format("{:.0f}/s", j["rate_per_second"].get<double>());
    if (!j["loads"].get<bool>()) {
      cells[6] = "-";
    } else if (!row.shares_app) {
      cells[6] = "own copy per worker";
    } else if (!have_requests) {
      cells[6] = "(give --request)";
    } else {
      auto shared = j["shared_state"].get<std::vector<std::string>>();
      std::string s;
      for (const auto& n : shared) s += (s.empty() ? "" : ", ") + n;
      cells[6] = shared.empty() ? "none seen" : "shared: " + s;
    }
    lines.push_back(cells);
  }
  std::array<std::size_t, 7> width{};
  for (const auto& l : lines) {
    for (std::size_t c = 0; c < l.size(); ++c) width[c] = std::max(width[c], l[c].size());
  }
  std::string out;
  for (const auto& l : lines) {
    std::string line;
    for (std::size_t c = 0; c < l.size(); ++c) {
      line += l[c];
      if (c + 1 < l.size()) line += std::string(width[c] - l[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

// Every strategy and build, probed side by side (threads reuses the main
// interpreter's import of processes). `preloaded`: the sub-interpreter probe
// again with --preload, when without it the import crashed.
std::vector<Row> probe_rows(const ServerConfig& config, const std::vector<std::string>& requests,
                            std::optional<ProbeResult>& preloaded) {
  const std::string default_bin = build_binary(PythonBuild::standard);
  const std::string ft_bin = build_binary(PythonBuild::free_threaded);
  auto run = [&](const std::string& bin, ProbeMode mode, Strategy strategy) -> std::optional<ProbeResult> {
    if (bin.empty()) return std::nullopt;
    return probe_app(bin, probe_request(config, mode, strategy, requests));
  };
  auto sub = std::async(std::launch::async, run, default_bin, ProbeMode::subinterpreter, Strategy::subinterpreters);
  auto main_default = std::async(std::launch::async, run, default_bin, ProbeMode::main_interpreter, Strategy::processes);
  auto main_ft = std::async(std::launch::async, run, ft_bin, ProbeMode::main_interpreter, Strategy::free_threaded);
  std::vector<Row> rows = {{Strategy::subinterpreters, PythonBuild::standard, sub.get(), false},
                           {Strategy::threads, PythonBuild::standard, std::nullopt, true},
                           {Strategy::processes, PythonBuild::standard, main_default.get(), false},
                           {Strategy::free_threaded, PythonBuild::free_threaded, main_ft.get(), true}};
  rows[1].result = rows[2].result;  // the same import, in the main interpreter
  if (!config.pool.preload && rows[0].result && rows[0].result->outcome == Outcome::crashed) {
    ServerConfig with = config;
    with.pool.preload = true;
    preloaded = probe_app(default_bin, probe_request(with, ProbeMode::subinterpreter, Strategy::subinterpreters, requests));
  }
  return rows;
}

// "WSGI", "ASGI": as the report names an app of `kind` (not routes).
std::string kind_name(AppKind kind) {
  std::string name = nlohmann::json(kind).get<std::string>();
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

void print_report(const ServerConfig& config, const nlohmann::json& doc, const std::vector<Row>& rows,
                  bool with_requests) {
  std::cout << "gilgamesh check: "
            << (config.app.kind == AppKind::routes ? std::string("app '")
                                                   : kind_name(config.app.kind) + " app '")
            << config.app.target << "', Python " << embedded_python_version()
            << (config.pool.preload ? ", with --preload" : "") << "\n\n";
  std::cout << table_text(doc, rows) << "\n";
  for (const auto& row : rows) {
    const std::string problems = row_problems(row);
    if (!problems.empty() && row.strategy != Strategy::threads) {
      std::cout << strategy_name(row.strategy) << ": " << problems << "\n";
    }
    if (const std::string loop = event_loop_text(row); !loop.empty()) {
      std::cout << strategy_name(row.strategy) << ": " << loop << "\n";
    }
  }
  if (with_requests) {
    for (const auto& row : rows) {
      if (!row.result || row.strategy == Strategy::threads) continue;
      for (const auto& r : row.result->rates) {
        if (!r.error.empty()) std::cout << strategy_name(row.strategy) << ": " << r.request << ": " << r.error << "\n";
        else if (r.status >= 400) std::cout << strategy_name(row.strategy) << ": " << r.request << " answered " << r.status << "\n";
      }
    }
  }
  const auto& rec = doc["recommendation"];
  if (rec["strategy"].get<std::string>().empty()) {
    std::cout << "\nNo strategy can serve this app: " << rows[2].result.value_or(ProbeResult{}).message << "\n";
  } else {
    std::string why = rec["why"].get<std::string>();
    if (!why.empty()) why[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(why[0])));
    std::cout << "\nRecommendation: --strategy " << rec["strategy"].get<std::string>() << ". " << why << ".\n";
    if (!rec["unlock"].get<std::string>().empty()) {
      std::cout << "To unlock a better one: " << rec["unlock"].get<std::string>() << ".\n";
    }
  }
}

}  // namespace

int check_main(int argc, char** argv) {
  CLI::App cli{"gilgamesh check: which strategies can serve this app, and why. The app is imported in a "
               "disposable process per strategy and Python build, as the server would import it.",
               "gilgamesh check"};
  std::string app, wsgi, asgi;
  std::vector<std::string> pythonpath, requests;
  bool json = false, preload = false;
  auto* app_option = cli.add_option("--app", app, "Python module whose @gilgamesh.route handlers to check");
  auto* wsgi_option = cli.add_option("--wsgi", wsgi, "PEP 3333 application, as MODULE:CALLABLE");
  auto* asgi_option = cli.add_option("--asgi", asgi, "ASGI 3 application, as MODULE:APP");
  cli.add_option("--pythonpath", pythonpath, "Directory to prepend to sys.path (repeatable)");
  cli.add_option("--request", requests,
                 "'METHOD /path?query' to call in-process for a single-thread rate (repeatable)");
  std::string lifespan = "auto", root_path;
  cli.add_option("--lifespan", lifespan,
                 "ASGI: the lifespan events --request runs after, as the server's flag: auto, on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  cli.add_option("--root-path", root_path,
                 "The URL prefix the app is mounted at, as the server's flag (WSGI's SCRIPT_NAME, ASGI's "
                 "root_path), for --request");
  cli.add_flag("--preload", preload, "Check as the server would run with --preload");
  cli.add_flag("--json", json, "Print one JSON document instead of the table");
  try {
    cli.parse(argc - 1, argv + 1);
  } catch (const CLI::CallForHelp&) {
    std::cout << cli.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    std::cerr << "gilgamesh check: " << e.what() << " (see gilgamesh check --help)\n";
    return 2;
  }
  if ((app_option->count() > 0) + (wsgi_option->count() > 0) + (asgi_option->count() > 0) != 1) {
    std::cerr << "gilgamesh check: give one of --app MODULE, --wsgi MODULE:CALLABLE or --asgi MODULE:APP\n";
    return 2;
  }
  if (asgi_option->count() > 0 && (asgi.find(':') == std::string::npos || asgi.front() == ':' ||
                                   asgi.back() == ':')) {
    std::cerr << "gilgamesh check: --asgi takes MODULE:APP, got '" << asgi << "'\n";
    return 2;
  }
  if (asgi_option->count() == 0 && cli.count("--lifespan") > 0) {
    std::cerr << "gilgamesh check: --lifespan is for ASGI apps (--asgi MODULE:APP)\n";
    return 2;
  }
  if (!normalize_root_path(root_path)) {
    std::cerr << "gilgamesh check: --root-path must start with '/', e.g. /api\n";
    return 2;
  }
  ServerConfig config;
  config.app.lifespan = nlohmann::json(lifespan).get<Lifespan>();
  config.app.root_path = root_path;
  config.pool.workers = 2;
  config.pool.preload = preload;
  config.app.pythonpath = pythonpath;
  if (wsgi_option->count() > 0) {
    config.app.target = wsgi.find(':') == std::string::npos ? wsgi + ":application" : wsgi;
    config.app.kind = AppKind::wsgi;
  } else if (asgi_option->count() > 0) {
    config.app.target = asgi;
    config.app.kind = AppKind::asgi;
  } else {
    config.app.target = app;
  }
  spdlog::set_level(spdlog::level::warn);

  std::optional<ProbeResult> preloaded;
  const std::vector<Row> rows = probe_rows(config, requests, preloaded);
  nlohmann::json doc = {{"app", config.app.target},
                        {"kind", config.app.kind == AppKind::routes ? std::string("app")
                                                                    : nlohmann::json(config.app.kind).get<std::string>()},
                        {"python", embedded_python_version()}, {"pythonpath", pythonpath},
                        {"preload", preload}, {"rows", nlohmann::json::array()}};
  bool any = false;
  for (const auto& row : rows) {
    doc["rows"].push_back(row_json(row));
    any = any || row_loads(row);
  }
  doc["recommendation"] = recommend(rows, preloaded);
  if (preloaded) doc["with_preload"] = ProbeResult::outcome_name(preloaded->outcome);
  if (json) {
    std::cout << doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    print_report(config, doc, rows, !requests.empty());
  }
  return any ? 0 : 1;
}

}  // namespace gilgamesh
