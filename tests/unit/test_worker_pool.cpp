// The WorkerPool's rules alone, with a Worker written in C++ (no Python):
// recycling, deadlines, interrupt / abandon / replace, back-off, drain, 503 on
// a full queue, start-up failure, readiness. Every wait here is bounded.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "pyworkers/pool/worker_pool.hpp"

using namespace gilgamesh;
using namespace std::chrono_literals;

namespace {

// Collects the answers of the jobs it owns.
class Answers {
 public:
  class Owner final : public JobOwner {
   public:
    explicit Owner(Answers& a) : answers_(a) {}
    void job_done(std::uint64_t token, HttpResponseData&& r) override { answers_.add(token, std::move(r)); }
    bool client_gone() const override { return gone; }
    std::atomic<bool> gone{false};

   private:
    Answers& answers_;
  };

  void add(std::uint64_t token, HttpResponseData&& r) {
    std::lock_guard lock(mutex_);
    ++calls_[token];
    by_token_[token] = std::move(r);
    cv_.notify_all();
  }
  // The answer to `token`, waiting up to `timeout`.
  std::optional<HttpResponseData> wait(std::uint64_t token, std::chrono::milliseconds timeout = 5000ms) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [&] { return by_token_.count(token) > 0; })) return std::nullopt;
    return by_token_[token];
  }
  int calls(std::uint64_t token) {
    std::lock_guard lock(mutex_);
    return calls_[token];
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::uint64_t, HttpResponseData> by_token_;
  std::map<std::uint64_t, int> calls_;
};

// What every test worker shares: counters, and knobs the tests turn.
struct Shared {
  std::atomic<int> made{0}, started{0}, ended{0}, handled{0}, interrupts{0};
  std::atomic<int> fail_starts{0};       // this many next start() calls throw
  std::atomic<bool> fail_first_start{false};
  std::atomic<int> held{0};              // what held() says (an event loop's requests)
  std::atomic<int> end_waits{0};         // the next this many end() calls wait for release() (a draining loop)
  std::atomic<bool> app_threads{false};  // what app_threads_running() says
  std::atomic<Clock::time_point> end_deadline{};  // what the last end() was given
  std::atomic<bool> shutdown_result{true};  // what the factory's shutdown() says
  bool pulls = false;                    // workers take their jobs from the queue (an in-process ASGI loop)
  bool pulls_when_rung = false;          // ... on the thread that rings them (a worker process's server side)
  std::atomic<bool> vanished{false};     // a "/vanish" job made its worker go (once)
  std::atomic<int> pulled{0};
  std::mutex release_mutex;
  std::condition_variable release_cv;
  bool released = false;                 // lets "/stuck" handlers return
  void release() {
    std::lock_guard lock(release_mutex);
    released = true;
    release_cv.notify_all();
  }
};

// Behaves by the request path: /ok answers; /sleep waits 5 s unless
// interrupted; /stuck ignores interrupts until released; /die loses the worker.
class TestWorker final : public Worker {
 public:
  TestWorker(Shared& shared, int slot) : shared_(shared), slot_(slot) { ++shared_.made; }

  std::vector<RouteInfo> start() override {
    if (shared_.fail_first_start.exchange(false)) throw StartupError("cannot load app 'test': it broke");
    if (shared_.fail_starts > 0) {
      --shared_.fail_starts;
      throw StartupError("replacement refused");
    }
    generation_ = ++shared_.started;
    return {{"/ok", {"GET"}, ""}};
  }

  HandleResult handle(const Job& job, std::uint64_t seq, int) override {
    ++shared_.handled;
    running_ = seq;
    interrupted_ = false;
    HandleResult out;
    const std::string& path = job.request.path;
    if (path == "/sleep") {
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, 5s, [&] { return interrupted_.load(); });
      out.response.status = interrupted_ ? 504 : 200;
    } else if (path == "/stuck") {
      std::unique_lock lock(shared_.release_mutex);
      shared_.release_cv.wait_for(lock, 10s, [&] { return shared_.released; });
      out.response.status = 200;
    } else if (path == "/swallow-once") {
      // Catches the first interrupt and carries on, like `except BaseException: pass`.
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, 5s, [&] { return interrupts_seen_ >= 2; });
      out.response.status = 504;
    } else if (path == "/die") {
      out.worker_lost = true;
      out.response.status = 502;
    } else {
      out.response.status = 200;
    }
    out.response.body = "slot " + std::to_string(slot_) + " gen " + std::to_string(generation_);
    running_ = 0;
    return out;
  }

  InterruptAction interrupt(std::uint64_t seq) override {
    if (running_ != seq) return InterruptAction::none;
    ++shared_.interrupts;
    std::lock_guard lock(mutex_);
    ++interrupts_seen_;
    interrupted_ = true;
    cv_.notify_all();
    return InterruptAction::interrupted;
  }

  void end(Clock::time_point threads_until) override {
    shared_.end_deadline = threads_until;
    if (shared_.end_waits.fetch_sub(1) > 0) {
      std::unique_lock lock(shared_.release_mutex);
      shared_.release_cv.wait_for(lock, 10s, [&] { return shared_.released; });
    }
    ++shared_.ended;
  }
  int held() const override { return shared_.held; }
  bool app_threads_running() override { return shared_.app_threads; }

  // With Shared::pulls: a thread of its own stands for the event loop. It parks on its
  // doorbell, pulls, and answers what it took. With Shared::pulls_when_rung too, the
  // doorbell pulls and answers on the ringing thread instead, as a worker process's
  // server side does; the first "/vanish" it takes finds the "process" gone: that job
  // and the rest it took are given back (carry), and alive() says so from then on.
  std::function<void()> doorbell() override {
    if (!shared_.pulls) return {};
    if (shared_.pulls_when_rung) return [this] { feed(); };
    return [this] {
      std::lock_guard lock(bell_mutex_);
      rung_ = true;
      bell_.notify_all();
    };
  }
  bool pulls_when_rung() const override { return shared_.pulls_when_rung; }
  bool can_vanish_while_idle() const override { return shared_.pulls_when_rung; }
  bool alive() override { return !gone_; }
  void pull_from(JobSource* source) override {
    if (shared_.pulls_when_rung) {
      {
        std::lock_guard lock(feed_mutex_);
        source_ = source;
        gone_ = false;  // a new start
      }
      if (source) feed();
      return;
    }
    if (source) {
      loop_stop_ = false;
      rung_ = true;  // it looks at once, as an AsgiLoop does
      loop_ = std::thread([this, source] { pull_loop(*source); });
      return;
    }
    {
      std::lock_guard lock(bell_mutex_);
      loop_stop_ = true;
      bell_.notify_all();
    }
    loop_.join();
  }

  bool recyclable() const override { return true; }
  bool abandonable() const override { return true; }
  WorkerDescription describe() const override { return {}; }

 private:
  Shared& shared_;
  const int slot_;
  int generation_ = 0;
  std::atomic<std::uint64_t> running_{0};
  std::atomic<bool> interrupted_{false};
  int interrupts_seen_ = 0;  // guarded by mutex_
  std::mutex mutex_;
  std::condition_variable cv_;

  void pull_loop(JobSource& source) {
    std::vector<Job> jobs;
    for (;;) {
      {
        std::unique_lock lock(bell_mutex_);
        bell_.wait_for(lock, 1s, [&] { return rung_ || loop_stop_; });
        if (loop_stop_) return;
        rung_ = false;
      }
      for (;;) {  // as a loop does before it waits: take what there is, else park
        jobs.clear();
        source.pull(jobs, 8, true);
        if (jobs.empty()) break;
        for (Job& job : jobs) answer_pulled(job);
      }
    }
  }
  void answer_pulled(Job& job) {
    ++shared_.pulled;
    HttpResponseData r;
    r.status = 200;
    r.body = "slot " + std::to_string(slot_) + " gen " + std::to_string(generation_);
    job.complete(std::move(r));
  }
  std::mutex bell_mutex_;
  std::condition_variable bell_;
  bool rung_ = false, loop_stop_ = false;  // guarded by bell_mutex_
  std::thread loop_;

  void feed() {
    std::lock_guard lock(feed_mutex_);
    if (!source_) return;
    std::vector<Job> jobs;
    for (;;) {
      if (gone_) {  // not rung again until a new start
        source_->unpark();
        return;
      }
      jobs.clear();
      source_->pull(jobs, 8, true);
      if (jobs.empty()) return;  // parked
      for (Job& job : jobs) {
        if (!gone_ && job.request.path == "/vanish" && !shared_.vanished.exchange(true)) gone_ = true;
        if (gone_) {
          source_->carry(std::move(job));
        } else {
          answer_pulled(job);
        }
      }
    }
  }
  std::mutex feed_mutex_;
  JobSource* source_ = nullptr;  // guarded by feed_mutex_
  std::atomic<bool> gone_{false};
};

class TestFactory final : public WorkerFactory {
 public:
  explicit TestFactory(Shared& shared) : shared_(shared) {}
  void prepare() override {}
  std::unique_ptr<Worker> make(int slot) override { return std::make_unique<TestWorker>(shared_, slot); }
  bool gil_enabled() const override { return false; }
  std::string python_version() const override { return "test"; }
  PythonBuild python_build() const override { return PythonBuild::standard; }
  StrategyTraits traits() const override { return {}; }
  bool shutdown(bool clean, Clock::time_point) override {
    shut_down_clean = clean;
    return shared_.shutdown_result;
  }
  std::optional<bool> shut_down_clean;

 private:
  Shared& shared_;
};

PoolTiming fast_timing() {
  PoolTiming t;
  t.interrupt_grace = 100ms;
  t.reinterrupt_every = 20ms;
  t.supervisor_tick = 5ms;
  t.backoff_first = 20ms;
  t.backoff_max = 200ms;
  t.stop_grace = 100ms;
  return t;
}

struct Fixture {
  explicit Fixture(ServerConfig c = {}, PoolTiming timing = fast_timing()) : config(std::move(c)) {
    auto f = std::make_unique<TestFactory>(shared);
    factory = f.get();
    pool = std::make_unique<WorkerPool>(config, std::move(f), timing);
  }
  ~Fixture() {
    shared.release();
    if (pool) pool->stop(Clock::now() + 5s);
  }

  // Submits GET `path` with the given time to its deadline; returns its token (0: refused).
  std::uint64_t submit(const std::string& path, std::chrono::milliseconds deadline_in = 5000ms,
                       SubmitResult* result = nullptr) {
    Job job;
    job.request.method = "GET";
    job.request.path = path;
    job.request.request_id = "r" + std::to_string(next_token);
    job.deadline = Clock::now() + deadline_in;
    job.owner = owner;
    job.token = next_token++;
    const SubmitResult r = pool->submit(job);
    if (result) *result = r;
    return r == SubmitResult::accepted ? job.token : 0;
  }

  // Polls `pool->stats()` until `pred` holds (bounded).
  template <class Pred>
  bool eventually(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      if (pred(stats())) return true;
      std::this_thread::sleep_for(5ms);
    }
    return pred(stats());
  }
  // The pool's figures as /stats shows them.
  nlohmann::json stats() const { return pool->stats(); }

  ServerConfig config;
  Shared shared;
  TestFactory* factory = nullptr;
  std::unique_ptr<WorkerPool> pool;
  Answers answers;
  std::shared_ptr<Answers::Owner> owner = std::make_shared<Answers::Owner>(answers);
  std::uint64_t next_token = 1;
};

ServerConfig with_workers(int n) {
  ServerConfig c;
  c.pool.workers = n;
  return c;
}

}  // namespace

TEST(WorkerPool, ServesEveryJobExactlyOnce) {
  Fixture f(with_workers(2));
  f.pool->start();
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 50; ++i) tokens.push_back(f.submit("/ok"));
  for (auto t : tokens) {
    auto r = f.answers.wait(t);
    ASSERT_TRUE(r) << t;
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
  for (auto t : tokens) EXPECT_EQ(f.answers.calls(t), 1) << t;
  EXPECT_EQ(f.shared.handled, 50);
  EXPECT_EQ(f.factory->shut_down_clean, std::optional<bool>(true));
}

TEST(WorkerPool, RecyclesAfterMaxRequests) {
  ServerConfig c = with_workers(1);
  c.pool.max_requests = 3;
  Fixture f(c);
  f.pool->start();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(f.answers.wait(f.submit("/ok")));
  // Recycled after requests 3, 6 and 9: four starts, three ends so far.
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["recycles_total"] == 3; }));
  EXPECT_EQ(f.shared.started, 4);
  EXPECT_EQ(f.shared.made, 1);  // one Worker object, restarted in its slot
  EXPECT_EQ(f.stats()["worker_details"][0]["recycles"], 3);
  EXPECT_EQ(f.stats()["replacements_total"], 0);
}

// Workers whose event loops take their jobs from the queue themselves: every job
// is answered once, counted as its worker's, and recycling still comes after
// --max-requests (the loop's pulls are what count).
TEST(WorkerPool, PullingWorkersServeEveryJobOnceAndRecycle) {
  ServerConfig c = with_workers(2);
  c.pool.max_requests = 5;
  Fixture f(c);
  f.shared.pulls = true;
  f.pool->start();
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back(f.submit("/ok"));
  for (auto t : tokens) ASSERT_TRUE(f.answers.wait(t)) << t;
  for (auto t : tokens) EXPECT_EQ(f.answers.calls(t), 1) << t;
  EXPECT_EQ(f.shared.pulled, 40);
  EXPECT_EQ(f.shared.handled, 0);  // no lane ran a job
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["recycles_total"] >= 7; }));
  const auto s = f.stats();
  EXPECT_EQ(s["worker_details"][0]["requests"].get<int>() + s["worker_details"][1]["requests"].get<int>(), 40);
}

// At stop, what is queued still goes to the pulling loops (or is answered 503),
// and the pool stops cleanly.
// A worker whose doorbell pulls on the ringing thread (a worker process's server side):
// it serves every job once, and when its "process" turns out gone with jobs it had
// pulled, they are carried to the worker's next start (lane 0 sees it gone within idle_check).
TEST(WorkerPool, AWorkerThatPullsWhenRungCarriesWhatItTookAcrossItsRestart) {
  Fixture f(with_workers(1));
  f.shared.pulls = true;
  f.shared.pulls_when_rung = true;
  f.pool->start();
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 20; ++i) tokens.push_back(f.submit("/ok"));
  for (auto t : tokens) ASSERT_TRUE(f.answers.wait(t)) << t;
  EXPECT_EQ(f.shared.started, 1);
  const auto vanish = f.submit("/vanish");
  auto r = f.answers.wait(vanish);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "slot 0 gen 2");  // answered by the next start, not lost
  EXPECT_EQ(f.shared.started, 2);
  EXPECT_EQ(f.stats()["replacements_total"], 1);
  tokens.push_back(vanish);
  for (int i = 0; i < 20; ++i) tokens.push_back(f.submit("/ok"));
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
  for (auto t : tokens) EXPECT_EQ(f.answers.calls(t), 1) << t;
  EXPECT_EQ(f.shared.pulled, 41);
  EXPECT_EQ(f.shared.handled, 0);  // no lane ran a job
}

TEST(WorkerPool, StopWithPullingWorkersAnswersEveryQueuedJob) {
  Fixture f(with_workers(2));
  f.shared.pulls = true;
  f.pool->start();
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 200; ++i) tokens.push_back(f.submit("/ok"));
  const auto t0 = Clock::now();
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
  EXPECT_LT(Clock::now() - t0, 2s);
  for (auto t : tokens) {
    auto r = f.answers.wait(t, 100ms);
    ASSERT_TRUE(r) << t;
    EXPECT_TRUE(r->status == 200 || r->status == 503) << r->status;
  }
  EXPECT_EQ(*f.factory->shut_down_clean, true);
}

TEST(WorkerPool, AWorkerRecycledWhileItsLoopHoldsRequestsDrainsBesideItsReplacement) {
  ServerConfig c = with_workers(1);
  c.pool.max_requests = 2;
  Fixture f(c);
  f.shared.held = 1;  // e.g. an open WebSocket on its event loop
  f.shared.end_waits = 1;
  f.pool->start();
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(f.answers.wait(f.submit("/ok")));
  // The recycled worker's end() is still waiting for what it holds; a new one serves the slot.
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["draining_workers"] == 1; }));
  auto r = f.answers.wait(f.submit("/ok"), 2000ms);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "slot 0 gen 2");
  EXPECT_EQ(f.shared.made, 2);
  EXPECT_EQ(f.shared.ended, 0);
  EXPECT_EQ(f.stats()["held"], 2);  // the draining worker's and the new one's
  f.shared.release();
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["draining_workers"] == 0; }));
  EXPECT_EQ(f.shared.ended, 1);
  EXPECT_EQ(f.stats()["recycles_total"], 1);
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
}

TEST(WorkerPool, AWorkerRecycledWhileItsAppsThreadsRunEndsBesideItsReplacement) {
  ServerConfig c = with_workers(1);
  c.pool.max_requests = 2;
  c.http.graceful_timeout = 7;
  Fixture f(c);
  f.shared.app_threads = true;  // ending it waits for them (a sub-interpreter's end)
  f.shared.end_waits = 1;
  f.pool->start();
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(f.answers.wait(f.submit("/ok")));
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["draining_workers"] == 1; }));
  const auto recycled_at = Clock::now();
  auto r = f.answers.wait(f.submit("/ok"), 2000ms);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "slot 0 gen 2");
  // The old worker's app threads get --graceful-timeout from the recycle.
  const Clock::time_point given = f.shared.end_deadline;
  EXPECT_GT(given, recycled_at + 5s);
  EXPECT_LT(given, recycled_at + 8s);
  f.shared.release();
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["draining_workers"] == 0; }));
  EXPECT_EQ(f.shared.ended, 1);
  const auto stop_deadline = Clock::now() + 3s;
  EXPECT_TRUE(f.pool->stop(stop_deadline));
  // At the stop, a worker's app threads get what is left of the graceful deadline.
  EXPECT_EQ(f.shared.end_deadline.load(), stop_deadline);
}

TEST(WorkerPool, StopIsNotCleanWhenTheFactoryLeftSomethingRunning) {
  Fixture f(with_workers(1));
  f.shared.shutdown_result = false;  // an app's thread outlived the graceful deadline
  f.pool->start();
  ASSERT_TRUE(f.answers.wait(f.submit("/ok")));
  EXPECT_FALSE(f.pool->stop(Clock::now() + 1s));
  EXPECT_EQ(*f.factory->shut_down_clean, true);  // every run had ended
}

TEST(WorkerPool, StopWaitsForADrainingRecycledWorker) {
  ServerConfig c = with_workers(1);
  c.pool.max_requests = 1;
  Fixture f(c);
  f.shared.held = 1;
  f.shared.end_waits = 1;
  f.pool->start();
  ASSERT_TRUE(f.answers.wait(f.submit("/ok")));
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["draining_workers"] == 1; }));
  std::thread releaser([&] {
    std::this_thread::sleep_for(200ms);
    f.shared.release();
  });
  const auto begun = Clock::now();
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
  EXPECT_GE(Clock::now() - begun, 150ms);  // it waited for the draining worker's end() (only that one waits)
  releaser.join();
  EXPECT_EQ(f.stats()["draining_workers"], 0);
}

TEST(WorkerPool, RecycleJitterStaysInRange) {
  ServerConfig c = with_workers(1);
  c.pool.max_requests = 2;
  c.pool.max_requests_jitter = 2;
  Fixture f(c);
  f.pool->start();
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(f.answers.wait(f.submit("/ok")));
  // Between 40/4 and 40/2 recycles.
  const auto recycles = f.stats()["recycles_total"].get<int>();
  EXPECT_GE(recycles, 40 / 4 - 1);
  EXPECT_LE(recycles, 40 / 2);
}

// A job stopped at its deadline is never completed by the pool: its connection
// answers 504 when the deadline passes (the one writer of 504s).
TEST(WorkerPool, JobPastItsDeadlineInTheQueueNeverRunsAndIsLeftToItsConnection) {
  Fixture f(with_workers(1));
  f.pool->start();
  const auto busy = f.submit("/sleep", 300ms);  // interrupted at 300 ms
  const auto late = f.submit("/ok", 50ms);
  ASSERT_TRUE(f.eventually([](const nlohmann::json& s) {
    return s["expired_in_queue_total"] == 1 && s["interrupted_total"] == 1 && s["busy_workers"] == 0;
  }));
  EXPECT_EQ(f.shared.handled, 1);  // only the sleeper ran
  EXPECT_EQ(f.answers.calls(late), 0);
  EXPECT_EQ(f.answers.calls(busy), 0);
}

TEST(WorkerPool, InterruptsAHandlerAtItsDeadlineAndKeepsTheWorker) {
  Fixture f(with_workers(1));
  f.pool->start();
  const auto started = Clock::now();
  const auto sleeper = f.submit("/sleep", 100ms);
  ASSERT_TRUE(f.eventually([](const nlohmann::json& s) {
    return s["interrupted_total"] == 1 && s["busy_workers"] == 0;
  }));
  EXPECT_LT(Clock::now() - started, 2s);
  EXPECT_EQ(f.shared.interrupts, 1);
  EXPECT_EQ(f.answers.calls(sleeper), 0);  // its connection answers 504
  auto ok = f.answers.wait(f.submit("/ok"));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->body, "slot 0 gen 1");  // the same worker: nothing was abandoned
  EXPECT_EQ(f.stats()["interrupted_total"], 1);
  EXPECT_EQ(f.stats()["abandoned_total"], 0);
}

TEST(WorkerPool, RepeatsTheInterruptForAHandlerThatSwallowsOne) {
  Fixture f(with_workers(1));
  f.pool->start();
  const auto swallower = f.submit("/swallow-once", 50ms);
  ASSERT_TRUE(f.eventually([&](const nlohmann::json& s) {
    return f.shared.interrupts >= 2 && s["busy_workers"] == 0;
  }));
  EXPECT_EQ(f.answers.calls(swallower), 0);
  auto ok = f.answers.wait(f.submit("/ok"));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->body, "slot 0 gen 1");  // stopped within the grace: not abandoned
  EXPECT_EQ(f.stats()["interrupted_total"], 1);  // one interruption, logged once
  EXPECT_EQ(f.stats()["abandoned_total"], 0);
}

TEST(WorkerPool, AbandonsAHandlerThatIgnoresTheInterruptAndReplacesItsWorker) {
  Fixture f(with_workers(1));
  f.pool->start();
  const auto stuck = f.submit("/stuck", 50ms);
  // The slot gets a fresh worker after the deadline and the grace.
  auto ok = f.answers.wait(f.submit("/ok", 3000ms));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(ok->body, "slot 0 gen 2");
  auto s = f.stats();
  EXPECT_EQ(s["abandoned_total"], 1);
  EXPECT_EQ(s["abandoned_live"], 1);
  EXPECT_EQ(s["replacements_total"], 1);
  EXPECT_EQ(f.pool->readiness().state, Readiness::State::ready);
  // When the stuck handler returns at last, its thread ends its worker and leaves.
  f.shared.release();
  EXPECT_TRUE(f.eventually([](const nlohmann::json& st) { return st["abandoned_live"] == 0; }));
  EXPECT_EQ(f.answers.calls(stuck), 0);  // past its deadline: its connection answered 504
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
  EXPECT_EQ(f.shared.ended, 2);
}

TEST(WorkerPool, PastTheAbandonLimitTheSlotIsNotReplacedAndReadinessSaysSo) {
  ServerConfig c = with_workers(1);
  c.pool.max_abandoned = 1;
  Fixture f(c);
  f.pool->start();
  f.submit("/stuck", 30ms);
  ASSERT_TRUE(f.eventually([](const nlohmann::json& s) {
    return s["abandoned_live"] == 1 && s["ready_workers"] == 1;
  }));
  // The fresh worker gets stuck too: no second abandonment.
  f.submit("/stuck", 100ms);
  ASSERT_TRUE(f.eventually([&](const nlohmann::json& s) {
    return s["interrupted_total"] == 2 && f.pool->readiness().state == Readiness::State::degraded;
  }));
  std::this_thread::sleep_for(300ms);  // several grace periods: still no replacement
  EXPECT_EQ(f.stats()["abandoned_total"], 1);
  EXPECT_NE(f.pool->readiness().reason.find("abandoned-worker limit (1)"), std::string::npos)
      << f.pool->readiness().reason;
  f.shared.release();
  EXPECT_TRUE(f.eventually([&](const nlohmann::json&) { return f.pool->readiness().ready(); }));
}

TEST(WorkerPool, ALostWorkerIsReplacedAndTheOthersKeepServing) {
  Fixture f(with_workers(2));
  f.pool->start();
  auto r = f.answers.wait(f.submit("/die"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["replacements_total"] == 1; }));
  for (int i = 0; i < 10; ++i) {
    auto ok = f.answers.wait(f.submit("/ok"));
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200);
  }
  EXPECT_EQ(f.shared.started, 3);
}

TEST(WorkerPool, FailingReplacementsBackOffThenRecover) {
  Fixture f(with_workers(1));
  f.pool->start();
  f.shared.fail_starts = 3;
  ASSERT_TRUE(f.answers.wait(f.submit("/die")));
  // No worker while the replacements fail: not ready, with the reason.
  ASSERT_TRUE(f.eventually([&](const nlohmann::json&) {
    const Readiness r = f.pool->readiness();
    return r.state == Readiness::State::degraded &&
           r.reason.find("replacement refused") != std::string::npos;
  }));
  const auto started = Clock::now();
  auto ok = f.answers.wait(f.submit("/ok", 5000ms));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  // Back-off of 20, 40 and 80 ms before the fourth try succeeds.
  EXPECT_GE(Clock::now() - started, 100ms);
  EXPECT_EQ(f.shared.fail_starts, 0);
  EXPECT_TRUE(f.pool->readiness().ready());
}

TEST(WorkerPool, AFullQueueRefusesAtOnce) {
  ServerConfig c = with_workers(1);
  c.pool.max_queue = 2;
  Fixture f(c);
  f.pool->start();
  f.submit("/stuck");
  ASSERT_TRUE(f.eventually([](const nlohmann::json& s) { return s["busy_workers"] == 1; }));
  SubmitResult result;
  EXPECT_NE(f.submit("/ok", 5000ms, &result), 0u);
  EXPECT_NE(f.submit("/ok", 5000ms, &result), 0u);
  EXPECT_EQ(f.submit("/ok", 5000ms, &result), 0u);
  EXPECT_EQ(result, SubmitResult::queue_full);
}

TEST(WorkerPool, DropsAJobWhoseClientLeftWhileItWaited) {
  Fixture f(with_workers(1));
  f.pool->start();
  auto other = std::make_shared<Answers::Owner>(f.answers);
  f.submit("/sleep", 200ms);
  Job job;
  job.request.path = "/ok";
  job.deadline = Clock::now() + 5s;
  job.owner = other;
  job.token = 999;
  ASSERT_EQ(f.pool->submit(job), SubmitResult::accepted);
  other->gone = true;
  auto r = f.answers.wait(999);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 499);
  EXPECT_EQ(f.shared.handled, 1);  // the sleeper only
  EXPECT_EQ(f.stats()["dropped_disconnected_total"], 1);
}

TEST(WorkerPool, StopDrainsThenAnswersWhatIsLeft503) {
  Fixture f(with_workers(1));
  f.pool->start();
  const auto running = f.submit("/sleep", 10000ms);
  ASSERT_TRUE(f.eventually([](const nlohmann::json& s) { return s["busy_workers"] == 1; }));
  const auto queued = f.submit("/ok", 10000ms);
  EXPECT_EQ(f.pool->readiness().state, Readiness::State::ready);
  // The deadline passes while the sleeper runs: the queued job is answered 503,
  // the running one is interrupted and returns within the stop grace.
  EXPECT_TRUE(f.pool->stop(Clock::now() + 100ms));
  auto q = f.answers.wait(queued);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->status, 503);
  ASSERT_TRUE(f.answers.wait(running));
  EXPECT_EQ(f.pool->readiness().state, Readiness::State::stopping);
  SubmitResult result;
  EXPECT_EQ(f.submit("/ok", 1000ms, &result), 0u);
  EXPECT_EQ(result, SubmitResult::stopping);
}

TEST(WorkerPool, AHandlerStillRunningAfterStopMakesItUnclean) {
  Fixture f(with_workers(1));
  f.pool->start();
  f.submit("/stuck", 10000ms);
  ASSERT_TRUE(f.eventually([](const nlohmann::json& s) { return s["busy_workers"] == 1; }));
  EXPECT_FALSE(f.pool->stop(Clock::now() + 50ms));
  EXPECT_EQ(f.factory->shut_down_clean, std::optional<bool>(false));
  f.shared.release();  // the detached thread finishes; the fixture keeps the pool alive
  std::this_thread::sleep_for(100ms);
}

TEST(WorkerPool, StartUpFailureIsThrownOnceWithTheReason) {
  Fixture f(with_workers(3));
  f.shared.fail_first_start = true;
  EXPECT_EQ(f.pool->readiness().state, Readiness::State::starting);
  try {
    f.pool->start();
    FAIL() << "start() did not throw";
  } catch (const StartupError& e) {
    EXPECT_STREQ(e.what(), "cannot load app 'test': it broke");
  }
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
}

TEST(WorkerPool, StatsDescribeEverySlot) {
  Fixture f(with_workers(3));
  f.pool->start();
  auto s = f.stats();
  ASSERT_EQ(s["worker_details"].size(), 3u);
  for (const auto& d : s["worker_details"]) {
    EXPECT_EQ(d["state"], "idle");
    EXPECT_EQ(d["requests"], 0);
  }
  EXPECT_EQ(s["ready_workers"], 3);
  EXPECT_EQ(s["max_abandoned"], 6);
  EXPECT_TRUE(f.pool->readiness().ready());
}

// The hand-off alone: consumers that spin and consumers that park both get every
// job exactly once, from several producers at once, and close() wakes them all.
namespace {

// `producers` threads push `each` jobs apiece (tokens 0 .. producers * each - 1), pausing
// now and then long enough for the consumers to run dry and park; then waits (10 s at
// most) until `taken` says every job was taken.
void push_numbered_jobs(JobQueue& queue, int producers, int each, const std::atomic<int>& taken) {
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&queue, p, each] {
      for (int i = 0; i < each; ++i) {
        Job job;
        job.token = static_cast<std::uint64_t>(p * each + i);
        ASSERT_EQ(queue.push(job), SubmitResult::accepted);
        if (i % 200 == 0) std::this_thread::sleep_for(1ms);
      }
    });
  }
  for (auto& t : threads) t.join();
  const auto until = Clock::now() + 10s;
  while (taken < producers * each && Clock::now() < until) std::this_thread::sleep_for(1ms);
}

void hand_off_every_job(std::chrono::nanoseconds spin) {
  JobQueue queue(1 << 16, spin);
  constexpr int kProducers = 3, kConsumers = 3, kJobsEach = 2000;
  std::atomic<int> taken{0};
  std::vector<std::atomic<int>> seen(kProducers * kJobsEach);
  std::vector<std::thread> consumers;
  for (int c = 0; c < kConsumers; ++c) {
    consumers.emplace_back([&] {
      while (auto job = queue.pop()) {
        ++seen[job->token];
        ++taken;
      }
    });
  }
  push_numbered_jobs(queue, kProducers, kJobsEach, taken);
  queue.close();  // parked consumers wake and leave
  for (auto& t : consumers) t.join();
  EXPECT_EQ(taken, kProducers * kJobsEach);
  for (std::size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], 1) << i;
  Job late;
  EXPECT_EQ(queue.push(late), SubmitResult::stopping);
}

}  // namespace

TEST(JobQueue, ParkedConsumersGetEveryJobOnce) { hand_off_every_job(std::chrono::nanoseconds(0)); }

TEST(JobQueue, SpinningConsumersGetEveryJobOnce) { hand_off_every_job(std::chrono::microseconds(50)); }

// Event loops that pull (never block in the queue): every job once, from several
// producers, each loop parked on its own doorbell while there is none (after a spin,
// with `spin`).
void pull_every_job(std::chrono::nanoseconds spin) {
  JobQueue queue(1 << 16, spin);
  constexpr int kProducers = 3, kPullers = 3, kJobsEach = 2000;
  std::atomic<int> taken{0};
  std::vector<std::atomic<int>> seen(kProducers * kJobsEach);
  struct Bell {
    std::mutex mutex;
    std::condition_variable cv;
    bool rung = false;
  };
  std::vector<Bell> bells(kPullers);
  std::vector<std::thread> pullers;
  for (int c = 0; c < kPullers; ++c) {
    pullers.emplace_back([&, c] {
      Bell& bell = bells[static_cast<std::size_t>(c)];
      JobQueue::Puller p;
      p.ring = [&bell] {
        std::lock_guard lock(bell.mutex);
        bell.rung = true;
        bell.cv.notify_all();
      };
      queue.add_puller(p);
      std::vector<Job> jobs;
      for (;;) {
        jobs.clear();
        queue.pull(p, jobs, 4, true);
        for (Job& job : jobs) {
          ++seen[job.token];
          ++taken;
        }
        if (!jobs.empty()) continue;
        if (queue.closed() && queue.depth() == 0) break;
        std::unique_lock lock(bell.mutex);
        ASSERT_TRUE(bell.cv.wait_for(lock, 5s, [&] { return bell.rung; })) << "a parked puller was never rung";
        bell.rung = false;
      }
      queue.remove_puller(p);
    });
  }
  push_numbered_jobs(queue, kProducers, kJobsEach, taken);
  queue.close();  // rings every parked puller
  for (auto& t : pullers) t.join();
  EXPECT_EQ(taken, kProducers * kJobsEach);
  for (std::size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], 1) << i;
}

TEST(JobQueue, PullersGetEveryJobOnce) { pull_every_job(std::chrono::nanoseconds(0)); }

TEST(JobQueue, SpinningPullersGetEveryJobOnce) { pull_every_job(std::chrono::microseconds(50)); }

// A puller about to park watches the queue for `spin` first: a job pushed meanwhile is
// taken by that pull, and no doorbell rings.
TEST(JobQueue, APullerThatSpinsTakesAJobPushedMeanwhileWithoutARing) {
  JobQueue queue(16, std::chrono::milliseconds(500));
  int rings = 0;
  JobQueue::Puller p;
  p.ring = [&] { ++rings; };
  queue.add_puller(p);
  std::thread producer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    Job job;
    job.token = 7;
    EXPECT_EQ(queue.push(job), SubmitResult::accepted);
  });
  std::vector<Job> out;
  const auto started = Clock::now();
  queue.pull(p, out, 8, true);
  producer.join();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].token, 7);
  EXPECT_EQ(rings, 0);
  EXPECT_LT(Clock::now() - started, std::chrono::milliseconds(400));  // back as the job came
  // Nothing comes: it spins its time, then parks; the next push rings it.
  out.clear();
  queue.pull(p, out, 8, true);
  EXPECT_TRUE(out.empty());
  Job late;
  EXPECT_EQ(queue.push(late), SubmitResult::accepted);
  EXPECT_EQ(rings, 1);
  queue.remove_puller(p);
}

// Two pullers registered with `queue` while it exists, each counting its rings.
struct CountingPullers {
  explicit CountingPullers(JobQueue& queue) : queue_(queue) {
    a.ring = [this] { ++rings_a; };
    b.ring = [this] { ++rings_b; };
    queue_.add_puller(a);
    queue_.add_puller(b);
  }
  ~CountingPullers() {
    queue_.remove_puller(a);
    queue_.remove_puller(b);
  }
  JobQueue::Puller a, b;
  int rings_a = 0, rings_b = 0;

 private:
  JobQueue& queue_;
};

// The push rings the puller that parked last, once; a puller takes its share of
// what waits (not all of it) and rings the next parked one for the rest.
TEST(JobQueue, APushRingsOneParkedPullerAndEachTakesItsShare) {
  JobQueue queue(16);
  CountingPullers pullers(queue);
  JobQueue::Puller &a = pullers.a, &b = pullers.b;
  const int &rings_a = pullers.rings_a, &rings_b = pullers.rings_b;
  std::vector<Job> out;
  queue.pull(a, out, 8, true);
  queue.pull(b, out, 8, true);
  EXPECT_TRUE(out.empty());
  Job job;
  queue.push(job);
  EXPECT_EQ(rings_b, 1);  // parked last
  EXPECT_EQ(rings_a, 0);
  for (int i = 0; i < 2; ++i) {
    Job more;
    queue.push(more);
  }
  EXPECT_EQ(rings_a, 1);  // b was rung already: the next push rings a
  EXPECT_EQ(rings_b, 1);
  queue.pull(b, out, 8, true);
  EXPECT_EQ(out.size(), 2u);  // three waiting, two pullers: its share
  EXPECT_EQ(queue.depth(), 1u);
  queue.pull(a, out, 8, false);
  EXPECT_EQ(out.size(), 3u);
  // Parked again, then unparked: a push rings nobody.
  queue.pull(a, out, 8, true);
  queue.unpark(a);
  Job last;
  queue.push(last);
  EXPECT_EQ(rings_a, 1);
}

// What a parked loop has room for is its own, not the queue's: a burst as large as
// the loops' room plus --max-queue is taken, one more is refused (as lanes that pop
// at once and hand the job to their loop would have it).
TEST(JobQueue, ThePullersRoomIsNotCountedAgainstTheQueue) {
  JobQueue queue(1);
  JobQueue::Puller a;
  a.ring = [] {};
  queue.add_puller(a);
  std::vector<Job> out;
  queue.pull(a, out, 3, true);  // idle, room for 3
  for (int i = 0; i < 4; ++i) {
    Job job;
    EXPECT_EQ(queue.push(job), SubmitResult::accepted) << i;
  }
  Job fifth;
  EXPECT_EQ(queue.push(fifth), SubmitResult::queue_full);
  queue.pull(a, out, 3, true);  // takes its 3: full now, one queued
  EXPECT_EQ(out.size(), 3u);
  EXPECT_EQ(queue.push(fifth), SubmitResult::queue_full);
  queue.remove_puller(a);
  out.clear();
  EXPECT_EQ(queue.depth(), 1u);
}

// A doorbell is rung without the queue's lock: a worker process's pulls on the
// ringing thread (the I/O thread's push) and parks again there. Under the lock this
// push would never return.
TEST(JobQueue, ADoorbellMayPullOnTheThreadThatRingsIt) {
  JobQueue queue(4);
  JobQueue::Puller p;
  p.spins = false;
  std::vector<Job> taken;
  p.ring = [&] {
    for (;;) {  // as AsgiProcessWorker::feed(): until nothing is left, then parked
      const std::size_t before = taken.size();
      queue.pull(p, taken, 8, true);
      if (taken.size() == before) break;
    }
  };
  queue.add_puller(p);
  std::vector<Job> none;
  queue.pull(p, none, 8, true);  // parked
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    for (int i = 0; i < 3; ++i) {
      Job job;
      job.token = static_cast<std::uint64_t>(i);
      EXPECT_EQ(queue.push(job), SubmitResult::accepted);
    }
    pushed = true;
  });
  const auto until = Clock::now() + 5s;
  while (!pushed && Clock::now() < until) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(pushed) << "a push whose doorbell pulls did not return";
  producer.join();
  ASSERT_EQ(taken.size(), 3u);  // each push rang it, and each ring took the job
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(taken[i].token, i);
  EXPECT_EQ(queue.depth(), 0u);
  queue.remove_puller(p);
}

// Of the parked pullers, a push rings the one with the most room (its loop holds the
// fewest requests), whichever parked last; among equals, the one that parked last.
TEST(JobQueue, APushRingsTheParkedPullerWithTheMostRoom) {
  JobQueue queue(16);
  CountingPullers pullers(queue);
  JobQueue::Puller &a = pullers.a, &b = pullers.b;
  const int &rings_a = pullers.rings_a, &rings_b = pullers.rings_b;
  std::vector<Job> out;
  queue.pull(a, out, 8, true);  // room 8
  queue.pull(b, out, 5, true);  // room 5, parked last
  Job job;
  queue.push(job);
  EXPECT_EQ(rings_a, 1);
  EXPECT_EQ(rings_b, 0);
  queue.pull(a, out, 5, true);  // takes it
  ASSERT_EQ(out.size(), 1u);
  queue.pull(a, out, 5, true);  // room 5 as b's, parked last
  Job tie;
  queue.push(tie);
  EXPECT_EQ(rings_a, 2);
  EXPECT_EQ(rings_b, 0);
  queue.pull(a, out, 5, true);  // takes it
  queue.pull(a, out, 2, true);  // room 2, parked last
  Job fuller;
  queue.push(fuller);
  EXPECT_EQ(rings_a, 2);
  EXPECT_EQ(rings_b, 1);
}

// remove_puller() returns only once no ring of the puller still runs: what the
// doorbell uses may be destroyed right after it.
TEST(JobQueue, RemovingAPullerWaitsForItsRingThatRuns) {
  JobQueue queue(4);
  JobQueue::Puller p;
  std::atomic<bool> ringing{false}, rang{false};
  p.ring = [&] {
    ringing = true;
    std::this_thread::sleep_for(100ms);
    rang = true;
  };
  queue.add_puller(p);
  std::vector<Job> none;
  queue.pull(p, none, 8, true);
  std::thread producer([&] {
    Job job;
    queue.push(job);
  });
  while (!ringing) std::this_thread::yield();
  queue.remove_puller(p);
  EXPECT_TRUE(rang);
  producer.join();
}

TEST(JobQueue, PopUntilGivesUpAtItsDeadlineAndSeesALateJob) {
  JobQueue queue(4, std::chrono::microseconds(50));
  const auto t0 = Clock::now();
  EXPECT_FALSE(queue.pop_until(t0 + 20ms));
  EXPECT_GE(Clock::now() - t0, 20ms);
  EXPECT_FALSE(queue.closed());
  std::thread late([&] {
    std::this_thread::sleep_for(5ms);  // paces the push after the consumer has parked
    Job job;
    job.token = 7;
    queue.push(job);
  });
  auto job = queue.pop_until(Clock::now() + 5s);
  late.join();
  ASSERT_TRUE(job);
  EXPECT_EQ(job->token, 7u);
  EXPECT_EQ(queue.depth(), 0u);
}

TEST(WorkerPool, AWorkerWithThreadsRunsThatManyJobsAtOnce) {
  ServerConfig c = with_workers(1);
  c.pool.threads = 3;
  Fixture f(c);
  f.pool->start();
  std::vector<std::uint64_t> stuck;
  for (int i = 0; i < 3; ++i) stuck.push_back(f.submit("/stuck"));
  ASSERT_TRUE(f.eventually([](const nlohmann::json& s) {
    return s["busy_threads"] == 3 && s["busy_workers"] == 1 && s["worker_details"][0]["busy_threads"] == 3;
  }));
  const auto queued = f.submit("/ok");
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(f.answers.calls(queued), 0);  // every lane is busy: it waits its turn
  f.shared.release();
  for (auto t : stuck) ASSERT_TRUE(f.answers.wait(t)) << t;
  ASSERT_TRUE(f.answers.wait(queued));
  EXPECT_EQ(f.shared.made, 1);  // one worker, three lanes
  EXPECT_EQ(f.stats()["threads_per_worker"], 3);
}

TEST(WorkerPool, RecyclingAWorkerWithThreadsDrainsItsLanesFirst) {
  ServerConfig c = with_workers(1);
  c.pool.threads = 2;
  c.pool.max_requests = 4;
  Fixture f(c);
  f.pool->start();
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 20; ++i) tokens.push_back(f.submit("/ok"));
  for (auto t : tokens) {
    auto r = f.answers.wait(t);
    ASSERT_TRUE(r) << t;
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_TRUE(f.eventually([](const nlohmann::json& s) { return s["recycles_total"] >= 4; }));
  EXPECT_EQ(f.shared.started, f.shared.ended + 1);  // each start ended before the next
  EXPECT_TRUE(f.pool->stop(Clock::now() + 5s));
  for (auto t : tokens) EXPECT_EQ(f.answers.calls(t), 1) << t;
}
