// The child side of `processes`: the zygote and the worker processes it forks.
//
// The server forks the zygote before any of its threads exist. The zygote is
// single-threaded: it initializes Python, imports the app once, and then forks
// a worker (copy-on-write: the app is already imported) whenever the server
// asks, reaping every child it made. Python never runs in the server process.
//
// Control protocol (frames::send_control / receive_control, JSON objects):
//   zygote -> server  {"type":"route","path","methods","doc"} for each route, then
//                     {"type":"ready","gil_enabled"}, or {"type":"failed","error"}
//                     {"type":"spawned","worker","pid"} + the server's end of the worker socket
//                     {"type":"spawn_failed","worker","error"}
//                     {"type":"exited","worker","pid","status"} for each child reaped
//   server -> zygote  {"type":"spawn","worker"}
//                     {"type":"stop","grace_ms"}: end every worker, reap, exit
// End of stream on the control socket means the same as stop with no grace.
#pragma once

#include "executor.hpp"

#include <sys/types.h>

#include <string>

namespace gilgamesh {

// Runs in the freshly forked zygote; never returns. `server_pid` is the
// process that forked it (the zygote dies with it).
[[noreturn]] void run_zygote(const ExecutorConfig& config, int control_fd, pid_t server_pid);

// "exited with status 3", "killed by signal 9 (Killed)": a wait() status in words.
std::string describe_wait_status(int status);

}  // namespace gilgamesh
