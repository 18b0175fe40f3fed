// The child side of `processes`: the zygote and the worker processes it forks.
//
// The server starts the zygote by executing its own binary again with
// kZygoteFlag (zygote_client.hpp), the control socket as fd kZygoteControlFd.
// The zygote is single-threaded: it initializes Python, imports the app once,
// and then forks a worker (copy-on-write: the app is already imported) whenever
// the server asks, reaping every child it made. It dies with the server
// (PR_SET_PDEATHSIG). Workers do not die with the zygote: a worker leaves when
// its sockets to the server close, so a zygote that dies costs no request.
// Python never runs in the server process.
//
// A worker process with --threads N serves N lanes, one OS thread each (the
// main thread is lane 0), each blocked on its own socket with no thread state
// attached and attaching its own to run a handler. With N > 1 a control thread
// reads the worker control socket and raises gilgamesh.HandlerTimeout in one
// lane's thread (PyThreadState_SetAsyncExc, as the in-process strategies do),
// so a stuck request is stopped while the process's other lanes answer on.
// SIGTERM stops every lane from taking another request (their sockets are shut
// for reading; the server's next write there fails, and the request goes to a
// replacement); the process exits once each lane has answered what it holds.
//
// Control protocol (frames::send_control / receive_control, JSON objects):
//   zygote -> server  {"type":"route","path","methods","doc"} for each route, then
//                     {"type":"ready","gil_enabled"}, or {"type":"failed","error","detail"}
//                     {"type":"spawned","worker","pid","lanes"} + the server's ends of the
//                     worker's sockets: `lanes` lane sockets (--threads), then, when lanes > 1,
//                     the worker control socket (frames.hpp)
//                     {"type":"spawn_failed","worker","error"}
//                     {"type":"exited","worker","pid","status"} for each child reaped
//   server -> zygote  {"type":"spawn","worker"}
//                     {"type":"stop","grace_ms"}: end every worker, reap, exit
// End of stream on the control socket means the same as stop with no grace.
#pragma once

#include "server/model/executor.hpp"

#include <spawn.h>
#include <sys/types.h>

#include <string>

namespace gilgamesh {

// argv[1] of the zygote's command line; then the control fd, the server's pid
// and {"config": ServerConfig, "log_level": ...} as JSON.
constexpr const char* kZygoteFlag = "--internal-zygote";
constexpr int kZygoteControlFd = 3;

// The zygote process's main(), for a command line that starts with kZygoteFlag.
// Never returns.
[[noreturn]] void zygote_main(int argc, char** argv);

// "exited with status 3", "killed by signal 9 (Killed)": a wait() status in words.
std::string describe_wait_status(int status);

// The event loop each worker process of an ASGI app runs (--loop), as the zygote
// settles it before its forks and `gilgamesh check` reports it: uvloop, imported here
// (attached, in the main interpreter, with the app's sys.path), or asyncio's.
struct EventLoopChoice {
  EventLoop loop = EventLoop::asyncio;  // what runs: asyncio or uvloop
  std::string uvloop_version;           // uvloop: its __version__ ("?" when it has none)
  std::string uvloop_error;             // why uvloop could not be imported, where it was tried
  std::string refusal;                  // --loop uvloop without it: why the server must not start
  // "uvloop 0.21.0 (--loop auto)", "asyncio's (--loop auto; uvloop: ModuleNotFoundError: ...)";
  // empty where nothing was chosen (not ASGI, or --loop asyncio).
  std::string description;
};
EventLoopChoice choose_event_loop(const AppOptions& app);

// posix_spawn attributes for a child of the server (the zygote, the start-up probe): no
// signal blocked, and the signals the server handles or ignores back to their defaults.
void init_spawn_attributes(posix_spawnattr_t& attr);

}  // namespace gilgamesh
