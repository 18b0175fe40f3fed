// The HTTP/1.1 front: listener, sessions, built-in endpoints, graceful
// shutdown. It sees Python only through the Executor interface.
#pragma once

#include <unistd.h>

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <stdexcept>
#include <utility>

#include "server/model/executor.hpp"
#include "server/model/options.hpp"

namespace gilgamesh {

// Why the listening socket could not be opened, in words for the user.
class ListenError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The environment variable that names a listening socket a server inherits (the --reload
// supervisor binds once and passes it to each server it starts).
inline constexpr const char* kListenFdVariable = "GILGAMESH_LISTEN_FD";
// Beside it, after a restart in place (SIGHUP): the --uds file the server made, which the
// server it starts removes in its turn.
inline constexpr const char* kListenFileVariable = "GILGAMESH_LISTEN_FILE";
// Set across a restart in place. The restart ignores SIGHUP and blocks it (main.cpp's
// hold_hangups: one sent meanwhile would otherwise end the process, and one blocked waits for
// the new server); this tells the new server to take SIGHUP over although it starts with it
// ignored, which would otherwise mean nohup.
inline constexpr const char* kRestartedVariable = "GILGAMESH_RESTARTED";

// The file of a UNIX socket this process made (--uds), removed when this ends in that process
// (not in a copy of it that the app forked). Empty (no path): nothing to remove.
class SocketFile {
 public:
  SocketFile() = default;
  explicit SocketFile(std::string path) : path_(std::move(path)), owner_(getpid()) {}
  ~SocketFile();
  SocketFile(SocketFile&& other) noexcept : path_(std::exchange(other.path_, {})), owner_(other.owner_) {}
  SocketFile& operator=(SocketFile&& other) noexcept;
  SocketFile(const SocketFile&) = delete;
  SocketFile& operator=(const SocketFile&) = delete;
  // The path, which is no longer removed here (a server started in its place takes it over).
  std::string release() { return std::exchange(path_, {}); }

 private:
  std::string path_;
  pid_t owner_ = 0;
};

// A listening socket this process made: the descriptor, the caller's to close, and for --uds
// the socket's file, which goes when the holder of `file` ends.
struct OwnListener {
  int fd = -1;
  SocketFile file;
};

// Binds and listens on --host:--port (SO_REUSEADDR), or on --uds's path. Throws ListenError,
// in words for the user, if it cannot.
OwnListener listen_socket(const HttpOptions& http);

// A listening TCP or UNIX stream socket this process inherited (--bind fd://N), checked and
// marked close-on-exec; throws ListenError naming `what` if it is none.
int adopt_listener(int fd, const std::string& what);

// The listening socket named by GILGAMESH_LISTEN_FD, taken once: the variable is removed and the
// descriptor marked close-on-exec, so that neither reaches the processes the server and the app
// start. nullopt: none was passed. Throws ListenError if it names no listening socket.
std::optional<int> take_inherited_listener();
// The --uds file named by GILGAMESH_LISTEN_FILE, taken once as the listener is: this process
// removes it when it ends. Empty: none was passed.
SocketFile take_inherited_socket_file();

// Which of stdin, stdout and stderr are terminals. A terminal that hangs up (its window closed,
// the ssh session gone) sends SIGHUP, and its descriptors stop being terminals: that SIGHUP
// stops the server as SIGTERM does, as it always did; any other restarts it.
struct Terminals {
  static Terminals now();
  bool lost_since(const Terminals& before) const;
  std::array<bool, 3> tty{};
};

// Whether this process was started with SIGHUP ignored (nohup): hangups then stay ignored, and
// there is no restart in place.
bool hangups_ignored();

// What a server restarting in place (SIGHUP) starts again with: its listening socket, still
// open (connections wait in its backlog), and its --uds file, left in place.
struct Restart {
  int fd = -1;
  std::string socket_path;
};

class HttpServer {
 public:
  // Serves on `listener` (take_inherited_listener; `file`, its --uds file to remove at the end,
  // if this process owns it), else binds one (listen_socket); throws ListenError if it cannot.
  HttpServer(const ServerConfig& config, Executor& executor, std::optional<int> listener = std::nullopt,
             SocketFile file = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (useful with --port 0); 0 on a UNIX socket.
  unsigned short port() const;
  enum class Outcome {
    stopped,                // drained and stopped cleanly
    handlers_left_running,  // a handler still ran at the deadline: exit without finalizing Python
  };
  // Serves: starts the executor's workers while the listener already answers
  // (rethrows its StartupError), serves until SIGTERM/SIGINT, then drains
  // within --graceful-timeout and stops the executor. A second signal exits the
  // process at once (status 1). SIGHUP drains the same way but keeps the listening
  // socket open: restart() then says what to start again with.
  Outcome run();
  // Before a restart in place, `check` (on run()'s thread, while the server serves) says
  // whether the app would start; a refusal is logged and the server goes on as it is.
  void check_before_restart(std::function<std::optional<StartupError>()> check);
  // After run(): the listener and --uds file for the server that replaces this one, when
  // SIGHUP asked for a restart in place (and no SIGTERM/SIGINT came after it); the file is
  // no longer removed here.
  std::optional<Restart> restart();

  struct Impl;  // sessions and the listener live here (http_server.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gilgamesh
