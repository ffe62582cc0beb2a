// The read stage of the transfer pipeline: reader threads that fill staging buffers from the
// shard files while the driver thread delivers and lands earlier messages.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

namespace shardload {

/// One read job: `work` fills a staging buffer (and throws on failure). Its outcome is published
/// to the driver thread through `state`.
struct ReadJob {
  std::function<int64_t()> work;  ///< returns the bytes it read
  /// 0 pending, 1 done, 2 failed (then `kind` and `error` say why).
  std::atomic<int> state{0};
  int64_t bytes = 0;
  ErrorKind kind = ErrorKind::kNone;
  std::string error;
};

/// A pool of reader threads taking jobs first in, first out. The jobs must not call MPI (only the
/// driver thread does) and may run concurrently with each other: the loader hands out jobs whose
/// reads are safe from any thread (prepared shard-file reads), or uses one thread.
class ReadStage {
 public:
  explicit ReadStage(int threads);
  ~ReadStage();
  ReadStage(const ReadStage&) = delete;
  ReadStage& operator=(const ReadStage&) = delete;

  /// Queues `job` (owned by the caller, alive until its state is no longer 0).
  void submit(ReadJob* job);
  /// Stops the threads after the jobs already running; queued jobs are dropped (state stays 0).
  void stop();
  /// Blocks until some job finishes after `seen` jobs had finished, or `timeout` passes; returns
  /// the number of jobs finished so far (pass it back as `seen` next time).
  uint64_t wait_finished(uint64_t seen, std::chrono::microseconds timeout);

 private:
  void loop();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<ReadJob*> queue_;
  std::condition_variable finished_cv_;
  uint64_t finished_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace shardload
