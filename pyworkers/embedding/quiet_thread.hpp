#pragma once

#include <pthread.h>
#include <signal.h>

#include <thread>
#include <utility>

namespace gilgamesh {

// While it lives, this thread blocks every signal; a thread started meanwhile
// inherits that mask and takes no signal: process-directed ones (SIGTERM, SIGINT)
// go to the thread that waits for them.
class SignalsBlocked {
 public:
  SignalsBlocked() {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old_);
  }
  ~SignalsBlocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  SignalsBlocked(const SignalsBlocked&) = delete;
  SignalsBlocked& operator=(const SignalsBlocked&) = delete;

 private:
  sigset_t old_;
};

// A thread that takes no signal.
template <class F>
std::thread quiet_thread(F&& f) {
  SignalsBlocked blocked;
  return std::thread(std::forward<F>(f));
}

}  // namespace gilgamesh
