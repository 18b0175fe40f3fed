#include "server/reload.hpp"

#include <fcntl.h>
#include <fnmatch.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "server/http/http_server.hpp"

namespace gilgamesh {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// How often the files are looked at (uvicorn's StatReload: 0.25 s).
constexpr long kPollNanoseconds = 300'000'000;
// After a change, how long the files must stay as they are before the restart: an editor's
// save or a `git checkout` writing several files is one restart.
constexpr auto kSettle = std::chrono::milliseconds(200);

// Past this many files a poll costs noticeable CPU (a home directory, a venv): say so once.
constexpr std::size_t kManyFiles = 20000;

using Snapshot = std::map<std::string, fs::file_time_type>;

// Which files are watched, as uvicorn's --reload-include/--reload-exclude: glob patterns
// (fnmatch) on a file's or folder's name, or, with a '/', on its path under the watched folder.
// *.py is included and uvicorn's editor droppings excluded by default; a pattern given for the
// other side takes a default out (--reload-exclude '*.py'), and an included name without
// wildcards is watched whatever the excludes say (--reload-include .env, though .* is out), as
// uvicorn's filter lets an exact match win.
class FileFilter {
 public:
  explicit FileFilter(const ReloadOptions& options)
      : includes_{"*.py"}, excludes_{".*", "*.py[cod]", ".sw.*", "~*"} {
    for (const std::string& p : options.includes) {
      std::erase(excludes_, p);
      includes_.push_back(p);
    }
    for (const std::string& p : options.excludes) {
      std::erase(includes_, p);
      excludes_.push_back(p);
    }
  }
  bool skips_folder(const fs::path& relative) const {
    return relative.filename() == "__pycache__" || Names(relative).any(excludes_);
  }
  // An include without wildcards names its file whatever the excludes say.
  bool watches(const fs::path& relative) const {
    const Names names(relative);
    return names.any(includes_, true) || (names.any(includes_) && !names.any(excludes_));
  }
  std::string describe() const {
    std::string text;
    for (const std::string& p : includes_) text += (text.empty() ? "" : " ") + p;
    return text;
  }

 private:
  // A file's or folder's name and its path under the watched folder: a pattern with a '/'
  // matches the path, any other the name.
  struct Names {
    explicit Names(const fs::path& relative) : name(relative.filename().string()), path(relative.generic_string()) {}
    bool any(const std::vector<std::string>& patterns, bool exact_only = false) const {
      return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) {
        const std::string& subject = p.find('/') == std::string::npos ? name : path;
        if (exact_only) return p.find_first_of("*?[") == std::string::npos && p == subject;
        return fnmatch(p.c_str(), subject.c_str(), 0) == 0;
      });
    }
    std::string name;
    std::string path;
  };
  std::vector<std::string> includes_;
  std::vector<std::string> excludes_;
};

// Every watched file under the folders, with its modification time; excluded folders (hidden
// ones, __pycache__) are not entered, and files that vanish while they are read are skipped.
Snapshot snapshot(const std::vector<fs::path>& dirs, const FileFilter& filter) {
  Snapshot files;
  for (const fs::path& dir : dirs) {
    std::error_code ec;
    fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code entry_ec;
      const fs::path relative = it->path().lexically_relative(dir);
      if (it->is_directory(entry_ec)) {
        if (filter.skips_folder(relative)) it.disable_recursion_pending();
        continue;
      }
      if (!filter.watches(relative)) continue;
      const auto mtime = it->last_write_time(entry_ec);
      if (!entry_ec) files.emplace(it->path().string(), mtime);
    }
  }
  return files;
}

// A file that is new, changed or gone since `before`; empty if none.
std::string first_change(const Snapshot& before, const Snapshot& now) {
  for (const auto& [path, mtime] : now) {
    const auto it = before.find(path);
    if (it == before.end() || it->second != mtime) return path;
  }
  for (const auto& [path, mtime] : before) {
    if (!now.contains(path)) return path;
  }
  return "";
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + strsignal(WTERMSIG(status));
  return "status ?";
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// This binary again, with the same arguments; the listening socket's number is already in the
// environment. In a process group of its own, so that a terminal's Ctrl-C reaches the
// supervisor only, which passes one SIGINT on; ended by SIGTERM if the supervisor dies.
pid_t start_server(char** argv, const sigset_t& mask) {
  const pid_t supervisor = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    spdlog::error("reloader: cannot start the server: fork failed: {}", std::strerror(errno));
    return -1;
  }
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != supervisor) _exit(1);
    sigprocmask(SIG_SETMASK, &mask, nullptr);
    execv("/proc/self/exe", argv);
    _exit(127);
  }
  return pid;
}

std::vector<fs::path> watched_dirs(const ReloadOptions& options) {
  std::vector<fs::path> dirs;
  std::error_code ec;
  if (options.dirs.empty()) dirs.push_back(fs::current_path(ec));
  for (const std::string& dir : options.dirs) dirs.push_back(fs::absolute(dir, ec).lexically_normal());
  return dirs;
}

std::string joined(const std::vector<fs::path>& dirs) {
  std::string text;
  for (const fs::path& dir : dirs) text += (text.empty() ? "" : ", ") + dir.string();
  return text;
}
}  // namespace

int reload_main(const ServerConfig& config, char** argv) {
  int fd = -1;
  SocketFile socket_file;  // --uds's: the supervisor made it, and removes it
  try {
    const int given = config.http.listen_fd;
    if (given >= 0) {
      fd = adopt_listener(given, "--bind fd://" + std::to_string(given));
    } else {
      OwnListener own = listen_socket(config.http);
      fd = own.fd;
      socket_file = std::move(own.file);
    }
  } catch (const ListenError& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  fcntl(fd, F_SETFD, 0);  // each server started inherits it
  setenv(kListenFdVariable, std::to_string(fd).c_str(), 1);

  const Terminals terminals = Terminals::now();
  sigset_t watched;
  sigset_t original;
  sigemptyset(&watched);
  for (int signo : {SIGINT, SIGTERM, SIGCHLD}) sigaddset(&watched, signo);
  // Started with hangups ignored (nohup): they stay ignored (blocked, one would be taken here).
  if (!hangups_ignored()) sigaddset(&watched, SIGHUP);
  sigprocmask(SIG_BLOCK, &watched, &original);

  const std::vector<fs::path> dirs = watched_dirs(config.reload);
  const FileFilter filter(config.reload);
  Snapshot files = snapshot(dirs, filter);
  spdlog::info("reloader: watching {} files ({}) under {}; the server restarts when one changes", files.size(),
               filter.describe(), joined(dirs));
  if (files.size() > kManyFiles) {
    spdlog::warn("reloader: {} files are looked at every {} ms; name the app's own folders with --reload-dir",
                 files.size(), kPollNanoseconds / 1'000'000);
  }
  // A stuck drain must not stop the development loop: past this the server is killed.
  const auto kill_after = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config.http.shutdown_delay + config.http.graceful_timeout + 5.0));

  pid_t child = start_server(argv, original);
  // restarting: the server was asked to stop for a change; stopping (SIGTERM/SIGINT came, even
  // during a restart): the supervisor ends with the server.
  enum class State { serving, restarting, stopping } state = State::serving;
  Clock::time_point kill_at = Clock::time_point::max();
  for (;;) {
    const timespec poll{0, kPollNanoseconds};
    const int signo = sigtimedwait(&watched, nullptr, &poll);
    const bool hung_up = signo == SIGHUP && Terminals::now().lost_since(terminals);
    if (signo == SIGINT || signo == SIGTERM || hung_up) {
      if (child <= 0) return 0;
      if (state != State::stopping) {
        spdlog::info("reloader: received {}{}; stopping the server", sigabbrev_np(signo),
                     hung_up ? " (the terminal hung up)" : "");
      }
      kill(child, hung_up ? SIGTERM : signo);  // a second one passes on too: the server stops at once
      state = State::stopping;
      kill_at = std::min(kill_at, Clock::now() + kill_after);
    }
    if (signo == SIGHUP && !hung_up && state == State::serving) {  // as if a file changed
      spdlog::info("reloader: received HUP; {} the server", child > 0 ? "restarting" : "starting");
      if (child > 0) {
        kill(child, SIGTERM);
        state = State::restarting;
        kill_at = Clock::now() + kill_after;
      } else {
        child = start_server(argv, original);
      }
    }
    int status = 0;
    if (child > 0 && waitpid(child, &status, WNOHANG) == child) {
      child = -1;
      kill_at = Clock::time_point::max();
      if (state == State::stopping) return exit_code(status);
      if (state == State::restarting) {
        state = State::serving;
        child = start_server(argv, original);
      } else {
        spdlog::warn("reloader: the server exited ({}); it starts again when a file changes", describe(status));
      }
    }
    if (child > 0 && Clock::now() >= kill_at) {
      spdlog::warn("reloader: the server (pid {}) is still running {:.0f} s after SIGTERM; killing it", child,
                   std::chrono::duration<double>(kill_after).count());
      kill(child, SIGKILL);
      kill_at = Clock::time_point::max();
    }
    if (state != State::serving || signo > 0) continue;

    Snapshot now = snapshot(dirs, filter);
    const std::string changed = first_change(files, now);
    if (changed.empty()) continue;
    for (;;) {  // until two looks kSettle apart agree
      const timespec pause{0, std::chrono::nanoseconds(kSettle).count()};
      nanosleep(&pause, nullptr);
      Snapshot again = snapshot(dirs, filter);
      if (first_change(now, again).empty()) break;
      now = std::move(again);
    }
    files = std::move(now);
    if (child > 0) {
      spdlog::info("reloader: {} changed; restarting the server", changed);
      kill(child, SIGTERM);
      state = State::restarting;
      kill_at = Clock::now() + kill_after;
    } else {
      spdlog::info("reloader: {} changed; starting the server", changed);
      child = start_server(argv, original);
    }
  }
}

}  // namespace gilgamesh
