#include "server/model/executor.hpp"

namespace gilgamesh {

const char* worker_state_name(WorkerState s) {
  switch (s) {
    case WorkerState::starting: return "starting";
    case WorkerState::idle: return "idle";
    case WorkerState::busy: return "busy";
    case WorkerState::recycling: return "recycling";
    case WorkerState::interrupting: return "interrupting";
    case WorkerState::replacing: return "replacing";
    case WorkerState::stopped: return "stopped";
  }
  return "?";
}

namespace {

template <typename T>
nlohmann::json or_null(const std::optional<T>& x) {
  return x ? nlohmann::json(*x) : nlohmann::json();
}

nlohmann::json worker_json(const WorkerStats& w) {
  return {{"worker", w.worker},
          {"state", worker_state_name(w.state)},
          {"busy", w.busy()},
          {"threads", w.threads},
          {"busy_threads", w.busy_threads},
          {"held", w.held},
          {"requests", w.requests},
          {"recycles", w.recycles},
          {"replacements", w.replacements},
          {"pid", w.pid},
          {"interpreter_id", or_null(w.interpreter_id)},
          {"busy_ms", or_null(w.busy_ms)},
          {"rss_bytes", or_null(w.rss_bytes)},
          {"pss_bytes", or_null(w.pss_bytes)}};
}

}  // namespace

void to_json(nlohmann::json& j, const PoolStats& s) {
  nlohmann::json workers = nlohmann::json::array();
  for (const WorkerStats& w : s.workers) workers.push_back(worker_json(w));
  j = {{"queue_depth", s.queue_depth},
       {"max_queue", s.max_queue},
       {"busy_workers", s.busy_workers},
       {"ready_workers", s.ready_workers},
       {"threads_per_worker", s.threads_per_worker},
       {"busy_threads", s.busy_threads},
       {"held", s.held},
       {"replacements_total", s.replacements_total},
       {"interrupted_total", s.interrupted_total},
       {"killed_total", s.killed_total},
       {"abandoned_total", s.abandoned_total},
       {"abandoned_live", s.abandoned_live},
       {"draining_workers", s.draining_workers},
       {"max_abandoned", s.max_abandoned},
       {"recycles_total", s.recycles_total},
       {"dropped_disconnected_total", s.dropped_disconnected_total},
       {"expired_in_queue_total", s.expired_in_queue_total},
       {"interpreters_created", s.interpreters_created},
       {"interpreters_ended", s.interpreters_ended},
       {"interpreters_left", s.interpreters_left},
       {"worker_pids", s.worker_pids},
       {"worker_details", std::move(workers)}};
  if (s.zygote_pid) j["zygote_pid"] = *s.zygote_pid;
  if (s.zygote_restarts_total) j["zygote_restarts_total"] = *s.zygote_restarts_total;
}

}  // namespace gilgamesh
