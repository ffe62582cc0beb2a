#include "loader/transfer/read_stage.h"

#include <new>

namespace shardload {

ReadStage::ReadStage(int threads) {
  for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { loop(); });
}

ReadStage::~ReadStage() { stop(); }

void ReadStage::submit(ReadJob* job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(job);
  }
  wake_.notify_one();
}

void ReadStage::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    queue_.clear();
  }
  wake_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

uint64_t ReadStage::wait_finished(uint64_t seen, std::chrono::microseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  finished_cv_.wait_for(lock, timeout, [&] { return finished_ != seen || stopping_; });
  return finished_;
}

void ReadStage::loop() {
  for (;;) {
    ReadJob* job = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
    }
    try {
      job->bytes = job->work();
      job->state.store(1, std::memory_order_release);
    } catch (const std::bad_alloc&) {
      job->kind = ErrorKind::kOther;
      job->error = "out of memory";
      job->state.store(2, std::memory_order_release);
    } catch (const std::exception& e) {
      job->kind = current_error_kind();
      job->error = e.what();
      job->state.store(2, std::memory_order_release);
    } catch (...) {
      job->kind = ErrorKind::kOther;
      job->error = "unknown error";
      job->state.store(2, std::memory_order_release);
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++finished_;
    }
    finished_cv_.notify_all();
  }
}

}  // namespace shardload
