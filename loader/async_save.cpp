#include "loader/async_save.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "loader/collective.h"
#include "loader/snapshot.h"
#include "transport/side_channel.h"

namespace shardload {

struct SaveHandle::State {
  std::string root;
  double blocked = 0;
  std::mutex mutex;
  std::condition_variable finished_cv;
  bool finished = false;
  SaveResult result;
  std::exception_ptr error;

  void finish(SaveResult r, std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    result = std::move(r);
    error = std::move(e);
    finished = true;
    finished_cv.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    finished_cv.wait(lock, [&] { return finished; });
  }
};

namespace {

/// The background thread: runs the saves in the order they were started (on every rank the
/// same order, so their collectives on the side channel match), one at a time. Never destroyed:
/// a process that ends without MPI_Finalize ends its save with it.
class Worker {
 public:
  void push(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
    jobs_.push_back(std::move(job));
    cv_.notify_one();
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();  // catches its own errors
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::thread thread_;
};

Worker& worker() {
  static auto* w = new Worker();
  return *w;
}

/// Saves not yet known to be finished, by path root.
std::mutex registry_mutex;
std::multimap<std::string, std::shared_ptr<SaveHandle::State>>& in_flight() {
  static auto* m = new std::multimap<std::string, std::shared_ptr<SaveHandle::State>>();
  return *m;
}

std::string root_of(const std::string& path) {
  std::error_code ec;
  auto p = std::filesystem::weakly_canonical(std::filesystem::absolute(path, ec), ec);
  return ec ? path : p.lexically_normal().string();
}

/// The states in flight for `root` (all when empty), taking the finished ones out.
std::vector<std::shared_ptr<SaveHandle::State>> states_for(const std::string& root) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  std::vector<std::shared_ptr<SaveHandle::State>> out;
  auto& m = in_flight();
  for (auto it = m.begin(); it != m.end();) {
    bool finished;
    {
      std::lock_guard<std::mutex> l(it->second->mutex);
      finished = it->second->finished;
    }
    if (finished) {
      it = m.erase(it);
      continue;
    }
    if (root.empty() || it->first == root) out.push_back(it->second);
    ++it;
  }
  return out;
}

std::atomic<bool> save_timed_out{false};

int64_t default_snapshot_limit() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page / 2 : 0;
}

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return buf;
}

}  // namespace

bool SaveHandle::done() const {
  if (!state_) throw UsageError("SaveHandle: no save (a default-constructed handle)");
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->finished;
}

SaveResult SaveHandle::wait() const {
  if (!state_) throw UsageError("SaveHandle: no save (a default-constructed handle)");
  state_->wait();
  if (state_->error) std::rethrow_exception(state_->error);
  return state_->result;
}

double SaveHandle::blocked_seconds() const { return state_ ? state_->blocked : 0; }

void wait_for_save_to(const std::string& path) {
  for (auto& s : states_for(root_of(path))) s->wait();
}

void wait_for_saves() {
  for (auto& s : states_for("")) s->wait();
}

int64_t release_snapshot_memory() {
  wait_for_saves();
  return snapshot_pool().release_unused();
}

bool an_async_save_timed_out() { return save_timed_out; }

int64_t snapshot_memory_bytes() { return snapshot_pool().held_bytes(); }

SaveHandle save_async(const Partition& partition, const std::string& path, MPI_Comm comm,
                      const SaveOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (!mpi_thread_multiple()) {
    throw UsageError("shardload::save_async(" + path +
                     "): the background save calls MPI beside the caller's thread, which needs "
                     "MPI_THREAD_MULTIPLE (start MPI with MPI_Init_thread asking for it)");
  }
  wait_for_save_to(path);
  // At the first async save on `comm`: its side channel (collective over `comm`). Later saves
  // agree on `control` only; the background uses `background` only.
  SideChannel& channel = side_channel(comm, options.timeout_seconds);
  Communicator& control = *channel.control;
  control.set_timeout(options.timeout_seconds);
  const std::string name = "shardload::save_async(" + path + ")";
  PhaseRunner phases(control, name);

  // The snapshot, where it fits; then every rank learns whether all did, and of any error.
  const int64_t need = snapshot_bytes(partition);
  const int64_t limit =
      options.snapshot_limit_bytes > 0 ? options.snapshot_limit_bytes : default_snapshot_limit();
  std::optional<at::Tensor> slab;
  std::optional<Partition> snapshot;
  ErrorKind kind = ErrorKind::kNone;
  std::string error;
  try {
    slab = snapshot_pool().lease(need, wants_pinned_memory(partition), limit);
    if (slab) snapshot = snapshot_into(partition, *slab);
  } catch (const std::exception& e) {
    kind = current_error_kind();
    error = e.what();
  }
  auto give_back = [&] {
    snapshot.reset();
    if (slab) snapshot_pool().give_back(*slab);
  };
  const auto short_of = control.allgather(slab || kind != ErrorKind::kNone ? 0 : need);
  try {
    phases.reduce("snapshot", kind, error);
  } catch (...) {
    give_back();
    throw;
  }
  std::vector<int> short_ranks;
  for (size_t r = 0; r < short_of.size(); ++r) {
    if (short_of[r] > 0) short_ranks.push_back(static_cast<int>(r));
  }
  if (!short_ranks.empty()) {
    give_back();
    if (!options.sync_fallback) {
      const auto r0 = static_cast<size_t>(short_ranks[0]);
      throw UsageError(name + ": the snapshot of " + control.name_ranks(short_ranks) +
                       " does not fit the snapshot memory limit (" + gib(short_of[r0]) +
                       " needed on rank " + std::to_string(r0) + ", limit " + gib(limit) +
                       " per rank, snapshot_limit_bytes; sync_fallback saves synchronously "
                       "instead)");
    }
    SaveResult r = save(partition, path, comm, options);
    auto state = std::make_shared<SaveHandle::State>();
    state->blocked = since(start);
    r.blocked_seconds = state->blocked;
    state->finish(std::move(r), nullptr);
    return SaveHandle(state);
  }

  auto state = std::make_shared<SaveHandle::State>();
  state->root = root_of(path);
  state->blocked = since(start);
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    in_flight().emplace(state->root, state);
  }
  on_side_channel_end([] { wait_for_saves(); });
  auto job = std::make_shared<std::pair<Partition, at::Tensor>>(std::move(*snapshot), *slab);
  snapshot.reset();
  MPI_Comm background = channel.background;
  worker().push([job, state, path, background, options] {
    SaveResult result;
    std::exception_ptr error;
    try {
      result = detail::save_now(job->first, path, background, options);
      result.asynchronous = true;
      result.blocked_seconds = state->blocked;
    } catch (...) {
      error = std::current_exception();
      if (current_error_kind() == ErrorKind::kTimeout) save_timed_out = true;
    }
    job->first = Partition();  // the snapshot's views of the slab go before the slab is reused
    snapshot_pool().give_back(job->second);
    state->finish(std::move(result), error);
  });
  return SaveHandle(state);
}

}  // namespace shardload
