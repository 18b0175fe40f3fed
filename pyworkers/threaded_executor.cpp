#include "threaded_executor.hpp"

#include <spdlog/spdlog.h>

#include <random>

#include "worker_identity.hpp"
#include "response.hpp"

namespace gilgamesh {

ThreadedExecutor::ThreadedExecutor(const ExecutorConfig& config,
                                   std::unique_ptr<PythonRuntime> runtime,
                                   std::function<bool()> prepare, HostFactory factory)
    : config_(config),
      runtime_(std::move(runtime)),
      prepare_(std::move(prepare)),
      factory_(std::move(factory)),
      queue_(config.max_queue),
      worker_state_(std::make_unique<WorkerState[]>(static_cast<std::size_t>(config.workers))) {}

ThreadedExecutor::~ThreadedExecutor() {
  if (!threads_.empty() && !abandoned_) stop(Clock::now());
  if (abandoned_) {
    // A worker still runs Python: finalizing would pull the interpreter from under it.
    (void)runtime_.release();
  }
}

void ThreadedExecutor::start() {
  if (prepare_) gil_enabled_ = prepare_();
  threads_.reserve(static_cast<std::size_t>(config_.workers));
  for (int i = 0; i < config_.workers; ++i) {
    threads_.emplace_back([this, i] { worker_main(i); });
  }
  std::unique_lock lock(lifecycle_mutex_);
  lifecycle_cv_.wait(lock, [&] { return started_ >= config_.workers || !startup_error_.empty(); });
  if (!startup_error_.empty()) {
    std::string error = startup_error_;
    lock.unlock();
    stop(Clock::now());
    throw StartupError(error);
  }
}

void ThreadedExecutor::report_started(int index, const std::vector<RouteInfo>* routes,
                                      std::string error) {
  std::lock_guard lock(lifecycle_mutex_);
  if (!error.empty()) {
    if (startup_error_.empty()) startup_error_ = std::move(error);
  } else if (routes_.empty()) {
    routes_ = *routes;
  } else {
    try {
      check_same_routes(routes_, *routes, index);
    } catch (const StartupError& e) {
      if (startup_error_.empty()) startup_error_ = e.what();
    }
  }
  ++started_;
  lifecycle_cv_.notify_all();
}

unsigned ThreadedExecutor::next_recycle_limit() {
  if (config_.max_requests == 0) return 0;
  if (config_.max_requests_jitter == 0) return config_.max_requests;
  thread_local std::mt19937 rng{std::random_device{}()};
  std::uniform_int_distribution<unsigned> jitter(0, config_.max_requests_jitter);
  return config_.max_requests + jitter(rng);
}

void ThreadedExecutor::worker_main(int index) {
  current_worker() = {config_.strategy.c_str(), index};
  WorkerState& state = worker_state_[static_cast<std::size_t>(index)];
  std::unique_ptr<InterpreterHost> host;
  bool started = false;
  try {
    host = factory_(index);
    const auto& routes = host->start();
    started = true;
    report_started(index, &routes, {});
  } catch (const std::exception& e) {
    report_started(index, nullptr, e.what()[0] ? e.what() : "worker failed to start");
  }

  if (started) {
    unsigned limit = next_recycle_limit();
    std::uint64_t since_recycle = 0;
    while (auto job = queue_.pop()) {
      HttpResponseData response;
      if (Clock::now() >= job->deadline) {
        response = make_error_response(504, "request waited past its deadline in the queue",
                                       job->request.request_id);
      } else {
        state.busy = true;
        ++busy_;
        response = host->handle(*job);
        --busy_;
        state.busy = false;
      }
      ++state.requests;
      job->complete(std::move(response));
      if (limit != 0 && ++since_recycle >= limit && host->can_recycle()) {
        // The queue is shared: other workers serve while this one recycles.
        spdlog::info("worker {}: recycling after {} requests", index, since_recycle);
        try {
          host->end();
          host->start();
          ++state.recycles;
        } catch (const std::exception& e) {
          spdlog::error("worker {}: could not restart after recycling: {}", index, e.what());
          started = false;
          break;
        }
        since_recycle = 0;
        limit = next_recycle_limit();
      }
    }
    if (started) host->end();
  }
  host.reset();
  std::lock_guard lock(lifecycle_mutex_);
  ++exited_;
  lifecycle_cv_.notify_all();
}

SubmitResult ThreadedExecutor::submit(Job& job) { return queue_.push(job); }

bool ThreadedExecutor::stop(Clock::time_point deadline) {
  if (threads_.empty()) return !abandoned_;
  queue_.close();
  std::unique_lock lock(lifecycle_mutex_);
  bool all_exited = lifecycle_cv_.wait_until(lock, deadline, [&] { return exited_ >= config_.workers; });
  lock.unlock();
  // What the workers could not take before the deadline is answered, not lost.
  for (Job& job : queue_.take_all()) {
    job.complete(make_error_response(503, "server is shutting down", job.request.request_id));
  }
  if (!all_exited) {
    lock.lock();
    // Queued jobs are gone now; give the running handlers a moment to return.
    all_exited = lifecycle_cv_.wait_for(lock, std::chrono::milliseconds(200),
                                        [&] { return exited_ >= config_.workers; });
    lock.unlock();
  }
  if (!all_exited) {
    spdlog::warn("{} handler(s) still running at the graceful deadline; not waiting for them",
                 busy_.load());
    for (auto& t : threads_) t.detach();
    threads_.clear();
    abandoned_ = true;
    return false;
  }
  for (auto& t : threads_) t.join();
  threads_.clear();
  return true;
}

ExecutorInfo ThreadedExecutor::info() const {
  return ExecutorInfo{config_.strategy, config_.workers, embedded_python_version(),
                      embedded_python_build(), gil_enabled_.load()};
}

nlohmann::json ThreadedExecutor::stats() const {
  nlohmann::json workers = nlohmann::json::array();
  for (int i = 0; i < config_.workers; ++i) {
    const WorkerState& s = worker_state_[static_cast<std::size_t>(i)];
    workers.push_back({{"worker", i},
                       {"requests", s.requests.load()},
                       {"recycles", s.recycles.load()},
                       {"busy", s.busy.load()}});
  }
  return {{"queue_depth", queue_.depth()},
          {"max_queue", config_.max_queue},
          {"busy_workers", busy_.load()},
          {"worker_details", std::move(workers)}};
}

}  // namespace gilgamesh
