// A process the app forks (os.fork() in a handler or at import, multiprocessing's "fork"
// start method) and that does not exec is a copy of the server (or of a worker process):
// it holds the listening socket, the server's handlers of SIGTERM, SIGINT and SIGHUP, and the
// thread that forked, which, should the handler return in the child as well, comes back
// into the server's code with an answer for a client the parent answers too.
// watch() makes such a copy harmless:
//   - at the fork, in the child: the listening socket is closed (the port is free once
//     the server exits, and no connection waits in a backlog that nobody accepts from),
//     and SIGTERM, SIGINT and SIGHUP get their default action back (a signal sent to the child is
//     the child's; with the server's handler it reached the server: "received SIGTERM");
//   - where an answer would leave (leave_if_forked(): a connection's job_done, a worker
//     process's frames), the copy exits (status 0, Python not finalized, as
//     multiprocessing's children do) instead.
// The server's own children (the zygote, the start-up probe) are posix_spawn()ed, which
// runs no fork handlers; a worker process calls watch() itself, after the zygote's fork.
#pragma once

#include <sys/types.h>

namespace gilgamesh::app_forks {

// Once per process that runs the app's code, before the app is imported. Any thread.
void watch();
// The listening socket a forked copy closes (-1: none). Any thread.
void set_listener(int fd);
// Whether this process is a copy the app forked.
bool forked();
// In such a copy: exits here. Elsewhere: returns at once (one load).
void leave_if_forked();
// After the app's import, with the pid of the process that began it: in a copy the app
// forked while it was imported and that returned from the import (it would carry on as a
// second server, worker or zygote), exits here. Works without watch() (the zygote).
void leave_if_copy_of(pid_t importer);

}  // namespace gilgamesh::app_forks
