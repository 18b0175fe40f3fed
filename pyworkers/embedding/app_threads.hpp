// Threads the app starts itself, as Python's own exit treats them: a
// non-daemon threading.Thread is waited for. Python waits without a bound;
// the server waits at most until its graceful deadline, and then leaves
// the interpreter to them (never ends or finalizes it).
#pragma once

#include <Python.h>

#include <chrono>
#include <csignal>
#include <string>
#include <vector>

namespace gilgamesh {

// On a thread of the server's own (a lane, an event loop), attached, once:
// threads the app starts from it are not daemons, as from a Python program's
// main thread (gilgamesh_api.py, _adopt_server_thread). Never throws.
void adopt_server_thread();

// The names of the app's threads Python's exit would wait for. Attached.
std::vector<std::string> app_thread_names();

// Runs what Python's exit runs for threads (threading._shutdown(): the
// threading atexit calls, which end concurrent.futures' idle workers, then a
// join of every non-daemon thread; gilgamesh_api.py, _shutdown_threads, which
// also joins when an atexit call raises), once, on a helper thread of
// `caller`'s interpreter, and waits for it until `deadline`, or until *signals
// (a signal handler's count) changes from what it is at the call. Returns the
// names of the threads still running when it stopped waiting: empty when they
// all ended (the helper is gone too). If not, the helper may stay, still
// waiting: the interpreter must then be neither ended nor finalized. `caller`
// is a thread state of this OS thread, detached.
std::vector<std::string> wait_for_app_threads(PyThreadState* caller,
                                              std::chrono::steady_clock::time_point deadline,
                                              const volatile std::sig_atomic_t* signals = nullptr);

// "'a', 'b' and 2 more", for a log line.
std::string describe_threads(const std::vector<std::string>& names);

}  // namespace gilgamesh
