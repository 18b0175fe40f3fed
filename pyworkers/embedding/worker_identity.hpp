// Who is running the current handler: set by each strategy on its worker
// threads (or in its worker processes), read by gilgamesh.worker_info().
#pragma once

#include <string>

namespace gilgamesh {

struct WorkerIdentity {
  const char* strategy = "unknown";
  int worker = -1;
};

// The calling thread's identity (thread-local).
WorkerIdentity& current_worker();

}  // namespace gilgamesh
