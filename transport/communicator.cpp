#include "transport/communicator.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <thread>

#include "core/error.h"

namespace shardload {
namespace {

/// Tags of the arrival census. On the private census communicator only, except kDupArrive and
/// kDupVerdict, which go on the caller's communicator while the private ones are being made
/// (and are all received before the constructor returns).
constexpr int kArrive = 31001;
constexpr int kVerdict = 31002;
constexpr int kDupArrive = 31003;
constexpr int kDupVerdict = 31004;

/// A verdict sent while throwing must outlive the throw: its buffer is never freed (a timeout
/// ends the job).
const std::string& keep(std::string s) {
  static std::deque<std::string> kept;
  kept.push_back(std::move(s));
  return kept.back();
}

std::string seconds_str(double s) {
  char buf[32];
  if (std::floor(s) == s && s < 1e9) {
    std::snprintf(buf, sizeof buf, "%.0f", s);
  } else {
    std::snprintf(buf, sizeof buf, "%.3g", s);
  }
  return buf;
}

std::string ranks_phrase(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

/// The census of one channel (a communicator and its two tags) after a timeout: rank 0 names
/// the ranks whose arrival notices fell short of `expected` and tells every rank that arrived;
/// the others learn it from rank 0, or name rank 0 when it is the one missing. Throws on every
/// rank that gets here.
[[noreturn]] void census(MPI_Comm comm, int arrive_tag, int verdict_tag, int rank, int size,
                         std::vector<int64_t>& arrived, int64_t expected, const std::string& phase,
                         double timeout, const std::string& operation) {
  const std::string head = operation.empty() ? "" : operation + ": ";
  auto drain = [&] {
    int flag = 1;
    while (flag) {
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, arrive_tag, comm, &flag, &st);
      if (!flag) break;
      int64_t v = 0;
      MPI_Recv(&v, 1, MPI_INT64_T, st.MPI_SOURCE, arrive_tag, comm, MPI_STATUS_IGNORE);
      ++arrived[static_cast<size_t>(rank == 0 ? st.MPI_SOURCE : 0)];
    }
  };
  const std::string tail =
      " did not reach phase '" + phase + "' within " + seconds_str(timeout) + " s";
  drain();
  if (rank == 0) {
    std::vector<int> missing;
    for (int r = 1; r < size; ++r) {
      if (arrived[static_cast<size_t>(r)] < expected) missing.push_back(r);
    }
    std::string message =
        head + (missing.empty() ? "the ranks did not complete phase '" + phase + "' within " +
                                      seconds_str(timeout) + " s (every rank arrived; MPI is stuck)"
                                : ranks_phrase(missing) + tail);
    const std::string& kept = keep(message);
    for (int r = 1; r < size; ++r) {
      if (std::find(missing.begin(), missing.end(), r) != missing.end()) continue;
      MPI_Request req;
      MPI_Isend(kept.data(), static_cast<int>(kept.size()), MPI_CHAR, r, verdict_tag, comm, &req);
      MPI_Request_free(&req);
    }
    throw TimeoutError(message, /*reporter=*/true);
  }
  if (arrived[0] < expected) throw TimeoutError(head + "rank 0" + tail, /*reporter=*/true);
  // Rank 0 arrived, so its own deadline ends at most one timeout after ours: wait for its word.
  Poller poll;
  while (poll.elapsed() < timeout + 5) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(0, verdict_tag, comm, &flag, &st);
    if (flag) {
      int n = 0;
      MPI_Get_count(&st, MPI_CHAR, &n);
      std::string text(static_cast<size_t>(std::max(n, 0)), '\0');
      MPI_Recv(text.data(), n, MPI_CHAR, 0, verdict_tag, comm, MPI_STATUS_IGNORE);
      throw TimeoutError(text, /*reporter=*/false);
    }
    poll.pause();
  }
  throw TimeoutError(head + "phase '" + phase + "' did not complete within " +
                         seconds_str(timeout) + " s, and rank 0 named no missing rank",
                     /*reporter=*/true);
}

}  // namespace

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw CommError(std::string(what) + " failed: " + std::string(text, static_cast<size_t>(len)));
}

void Poller::pause() {
  ++polls_;
  // MPI's non-blocking operations advance only inside MPI calls: test often for the first few
  // milliseconds (yielding the core to the ranks we wait for), then back off to sleeps that
  // grow to 1 ms for a peer that is really late.
  const double waited = elapsed();
  if (waited < 0.005) {
    sched_yield();
  } else if (waited < 0.1) {
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(std::min<int64_t>(1000, polls_)));
  }
}

double Poller::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Poller::reset() {
  start_ = std::chrono::steady_clock::now();
  polls_ = 0;
}

int node_local_rank(MPI_Comm comm) {
  MPI_Comm node = MPI_COMM_NULL;
  int rank = 0;
  SHARDLOAD_MPI(MPI_Comm_rank(comm, &rank));
  SHARDLOAD_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  int local = 0;
  SHARDLOAD_MPI(MPI_Comm_rank(node, &local));
  MPI_Comm_free(&node);
  return local;
}

Communicator::Communicator(MPI_Comm comm, double timeout_seconds)
    : parent_(comm), timeout_(timeout_seconds) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) throw UsageError("MPI is not initialized: call MPI_Init in main()");
  SHARDLOAD_MPI(MPI_Comm_rank(comm, &rank_));
  SHARDLOAD_MPI(MPI_Comm_size(comm, &size_));
  arrived_.assign(rank_ == 0 ? static_cast<size_t>(size_) : 1, 0);

  // The private duplicates are made non-blocking under the same deadline as everything else; a
  // rank that never arrives is named from arrival notices on the caller's communicator.
  static const int64_t kOne = 1;
  std::vector<MPI_Request> notices;
  auto notify = [&](int to) {
    notices.emplace_back();
    SHARDLOAD_MPI(MPI_Isend(&kOne, 1, MPI_INT64_T, to, kDupArrive, comm, &notices.back()));
  };
  if (rank_ == 0) {
    for (int r = 1; r < size_; ++r) notify(r);
  } else {
    notify(0);
  }
  MPI_Request dups[2];
  SHARDLOAD_MPI(MPI_Comm_idup(comm, &comm_, &dups[0]));
  SHARDLOAD_MPI(MPI_Comm_idup(comm, &census_, &dups[1]));
  Poller poll;
  for (;;) {
    int done = 0;
    SHARDLOAD_MPI(MPI_Testall(2, dups, &done, MPI_STATUSES_IGNORE));
    if (done) break;
    if (timeout_ > 0 && poll.elapsed() > timeout_) {
      broken_ = true;
      std::vector<int64_t> arrived(arrived_.size(), 0);
      census(comm, kDupArrive, kDupVerdict, rank_, size_, arrived, 1, phase_, timeout_, operation_);
    }
    poll.pause();
  }
  // Every rank sent its notice before its idup, so they are all here (or in flight): take them.
  const int expected = rank_ == 0 ? size_ - 1 : 1;
  for (int i = 0; i < expected; ++i) {
    int64_t v = 0;
    SHARDLOAD_MPI(MPI_Recv(&v, 1, MPI_INT64_T, rank_ == 0 ? MPI_ANY_SOURCE : 0, kDupArrive, comm,
                           MPI_STATUS_IGNORE));
  }
  SHARDLOAD_MPI(MPI_Waitall(static_cast<int>(notices.size()), notices.data(), MPI_STATUSES_IGNORE));
  SHARDLOAD_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  SHARDLOAD_MPI(MPI_Comm_set_errhandler(census_, MPI_ERRORS_RETURN));
  // Node-local rank and size from MPI itself (the ranks that can share memory), never from a
  // launcher's variables: right after the duplicates, every rank is here.
  MPI_Comm node = MPI_COMM_NULL;
  SHARDLOAD_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  SHARDLOAD_MPI(MPI_Comm_rank(node, &local_rank_));
  SHARDLOAD_MPI(MPI_Comm_size(node, &local_size_));
  MPI_Comm_free(&node);
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized || broken_) return;  // a rank may be stuck in a collective: leave it be
  // Take the remaining arrival notices (all were sent; some may still be in flight), bounded in
  // case a rank left the common path by a bug.
  const int64_t want = rank_ == 0 ? static_cast<int64_t>(size_ - 1) * seq_ : seq_;
  Poller poll;
  for (;;) {
    drain_arrivals();
    int64_t have = 0;
    for (size_t r = rank_ == 0 ? 1 : 0; r < arrived_.size(); ++r) have += arrived_[r];
    int sent = 0;
    MPI_Testall(static_cast<int>(sends_.size()), sends_.data(), &sent, MPI_STATUSES_IGNORE);
    if ((have >= want && sent) || poll.elapsed() > 2) break;
    poll.pause();
  }
  for (auto& req : sends_) {
    if (req != MPI_REQUEST_NULL) MPI_Request_free(&req);
  }
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  if (census_ != MPI_COMM_NULL) MPI_Comm_free(&census_);
}

void Communicator::announce() const {
  ++seq_;
  send_buffers_.push_back(seq_);
  const int64_t* buf = &send_buffers_.back();
  auto notify = [&](int to) {
    sends_.emplace_back();
    SHARDLOAD_MPI(MPI_Isend(buf, 1, MPI_INT64_T, to, kArrive, census_, &sends_.back()));
  };
  if (rank_ == 0) {
    for (int r = 1; r < size_; ++r) notify(r);
  } else {
    notify(0);
  }
  // Keep the request list short: completed sends are dropped.
  if (sends_.size() > 4096) {
    int done = 0;
    MPI_Testall(static_cast<int>(sends_.size()), sends_.data(), &done, MPI_STATUSES_IGNORE);
    if (done) sends_.clear();
  }
}

void Communicator::drain_arrivals() const {
  for (;;) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, kArrive, census_, &flag, &st);
    if (!flag) return;
    int64_t v = 0;
    MPI_Recv(&v, 1, MPI_INT64_T, st.MPI_SOURCE, kArrive, census_, MPI_STATUS_IGNORE);
    ++arrived_[static_cast<size_t>(rank_ == 0 ? st.MPI_SOURCE : 0)];
  }
}

void Communicator::census_and_throw(const char* /*what*/) const {
  broken_ = true;
  census(census_, kArrive, kVerdict, rank_, size_, arrived_, seq_, phase_, timeout_, operation_);
}

void Communicator::guarded(const char* what, const std::function<void(MPI_Request*)>& start) const {
  if (broken_)
    throw CommError(std::string(what) + ": the communicator is unusable after a timeout");
  announce();
  MPI_Request req = MPI_REQUEST_NULL;
  try {
    start(&req);
  } catch (...) {
    broken_ = true;
    throw;
  }
  Poller poll;
  for (;;) {
    int done = 0;
    int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      broken_ = true;
      check_mpi(rc, what);
    }
    if (done) break;
    if (timeout_ > 0 && poll.elapsed() > timeout_) census_and_throw(what);
    poll.pause();
  }
  drain_arrivals();
}

std::vector<std::string> Communicator::allgather(const std::string& mine) const {
  // Sizes first, so that an oversized contribution is the same error on every rank.
  std::vector<int64_t> sizes = allgather(static_cast<int64_t>(mine.size()));
  const int64_t kMax = std::numeric_limits<int>::max();
  int64_t total = 0;
  for (size_t r = 0; r < sizes.size(); ++r) {
    if (sizes[r] < 0 || sizes[r] > kMax - total) {
      throw CommError("allgather: rank " + std::to_string(r) + "'s contribution of " +
                      std::to_string(sizes[r]) + " bytes takes the exchange past 2 GiB");
    }
    total += sizes[r];
  }
  std::vector<int> counts(sizes.size()), displs(sizes.size());
  for (size_t i = 0, pos = 0; i < sizes.size(); pos += static_cast<size_t>(sizes[i]), ++i) {
    counts[i] = static_cast<int>(sizes[i]);
    displs[i] = static_cast<int>(pos);
  }
  std::string all(static_cast<size_t>(total), '\0');
  guarded("MPI_Iallgatherv", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Iallgatherv(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, all.data(),
                                  counts.data(), displs.data(), MPI_BYTE, comm_, req));
  });
  std::vector<std::string> out(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) {
    out[i] = all.substr(static_cast<size_t>(displs[i]), static_cast<size_t>(counts[i]));
  }
  return out;
}

std::vector<int64_t> Communicator::allgather(int64_t mine) const {
  std::vector<int64_t> out(static_cast<size_t>(size_));
  guarded("MPI_Iallgather", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Iallgather(&mine, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, comm_, req));
  });
  return out;
}

int64_t Communicator::allreduce_sum(int64_t value) const {
  int64_t out = 0;
  guarded("MPI_Iallreduce", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Iallreduce(&value, &out, 1, MPI_INT64_T, MPI_SUM, comm_, req));
  });
  return out;
}

int64_t Communicator::allreduce_max(int64_t value) const {
  int64_t out = 0;
  guarded("MPI_Iallreduce", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Iallreduce(&value, &out, 1, MPI_INT64_T, MPI_MAX, comm_, req));
  });
  return out;
}

double Communicator::allreduce_max(double value) const {
  double out = 0;
  guarded("MPI_Iallreduce", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Iallreduce(&value, &out, 1, MPI_DOUBLE, MPI_MAX, comm_, req));
  });
  return out;
}

void Communicator::broadcast(std::string& bytes, int root) const {
  int64_t n = static_cast<int64_t>(bytes.size());
  guarded("MPI_Ibcast", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Ibcast(&n, 1, MPI_INT64_T, root, comm_, req));
  });
  bytes.resize(static_cast<size_t>(n));
  constexpr int64_t kPart = int64_t{1} << 30;
  for (int64_t pos = 0; pos < n; pos += kPart) {
    const int part = static_cast<int>(std::min(kPart, n - pos));
    guarded("MPI_Ibcast", [&](MPI_Request* req) {
      SHARDLOAD_MPI(MPI_Ibcast(bytes.data() + pos, part, MPI_BYTE, root, comm_, req));
    });
  }
}

void Communicator::barrier() const {
  guarded("MPI_Ibarrier", [&](MPI_Request* req) { SHARDLOAD_MPI(MPI_Ibarrier(comm_, req)); });
}

MPI_Comm Communicator::duplicate() const {
  MPI_Comm out = MPI_COMM_NULL;
  guarded("MPI_Comm_idup",
          [&](MPI_Request* req) { SHARDLOAD_MPI(MPI_Comm_idup(comm_, &out, req)); });
  SHARDLOAD_MPI(MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN));
  return out;
}

void Communicator::throw_stalled(const std::vector<int>& peers, const std::string& what) const {
  broken_ = true;
  std::string who = peers.empty() ? "the other ranks" : ranks_phrase(peers);
  throw TimeoutError(
      (operation_.empty() ? "" : operation_ + ": ") + who + " made no progress in phase '" +
          phase_ + "' within " + seconds_str(timeout_) + " s (" + what + ")",
      /*reporter=*/rank_ == 0 || std::find(peers.begin(), peers.end(), 0) != peers.end());
}

}  // namespace shardload
