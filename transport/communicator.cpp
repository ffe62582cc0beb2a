#include "transport/communicator.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

#include "core/error.h"
#include "transport/launcher.h"

namespace shardload {
namespace {

/// Tags of the arrival census. On the private census communicator only, except kDupArrive and
/// kDupVerdict, which go on the caller's communicator while the private ones are being made
/// (and are all received before the constructor returns).
constexpr int kArrive = 31001;
constexpr int kVerdict = 31002;
constexpr int kDupArrive = 31003;
constexpr int kDupVerdict = 31004;
constexpr int kStall = 31005;  ///< rank 0's stall notice: "<seq>\n<missing ranks, comma-separated>"

/// Host names travel in fixed-size slots (one MPI_Iallgather at construction).
constexpr size_t kHostBytes = 64;

std::string this_host() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  std::string s(buf);
  if (s.size() >= kHostBytes) s.resize(kHostBytes - 1);
  return s;
}

/// Host names of world ranks met so far in this process: a communicator whose construction
/// times out can still name the host of a rank that an earlier one gathered.
std::mutex host_cache_mutex;
std::map<int, std::string>& host_cache() {
  static std::map<int, std::string> cache;
  return cache;
}

/// The world rank of each rank of `comm` (-1 where it cannot be told).
std::vector<int> world_ranks_of(MPI_Comm comm, int size) {
  std::vector<int> ranks(static_cast<size_t>(size)), world(static_cast<size_t>(size), -1);
  std::iota(ranks.begin(), ranks.end(), 0);
  MPI_Group group = MPI_GROUP_NULL, world_group = MPI_GROUP_NULL;
  if (MPI_Comm_group(comm, &group) == MPI_SUCCESS &&
      MPI_Comm_group(MPI_COMM_WORLD, &world_group) == MPI_SUCCESS) {
    MPI_Group_translate_ranks(group, size, ranks.data(), world_group, world.data());
  }
  if (group != MPI_GROUP_NULL) MPI_Group_free(&group);
  if (world_group != MPI_GROUP_NULL) MPI_Group_free(&world_group);
  for (int& w : world) {
    if (w == MPI_UNDEFINED) w = -1;
  }
  return world;
}

/// The hosts of `comm`'s ranks as far as this process knows them ("" where it does not).
std::vector<std::string> cached_hosts(MPI_Comm comm, int rank, int size) {
  std::vector<std::string> hosts(static_cast<size_t>(size));
  auto world = world_ranks_of(comm, size);
  std::lock_guard<std::mutex> lock(host_cache_mutex);
  for (size_t r = 0; r < hosts.size(); ++r) {
    auto it = host_cache().find(world[r]);
    if (it != host_cache().end()) hosts[r] = it->second;
  }
  // A rank this process has not met yet (one that never reaches a collective, say) is named
  // with the host its launcher placed it on.
  const auto& placed = launcher_hosts();
  for (size_t r = 0; r < hosts.size(); ++r) {
    const auto w = static_cast<size_t>(world[r]);
    if (hosts[r].empty() && world[r] >= 0 && w < placed.size()) hosts[r] = placed[w];
  }
  hosts[static_cast<size_t>(rank)] = this_host();
  return hosts;
}

/// The thread's innermost StallReportScope.
thread_local const StallReportScope* stall_scope = nullptr;

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

/// Receives the arrival notices (`tag`) that have come, counting them per sender (rank 0) or
/// for rank 0 (the others).
void drain_notices(MPI_Comm comm, int tag, int rank, std::vector<int64_t>& arrived) {
  for (;;) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, tag, comm, &flag, &st);
    if (!flag) return;
    int64_t v = 0;
    MPI_Recv(&v, 1, MPI_INT64_T, st.MPI_SOURCE, tag, comm, MPI_STATUS_IGNORE);
    ++arrived[static_cast<size_t>(rank == 0 ? st.MPI_SOURCE : 0)];
  }
}

/// The ranks whose arrival count is below `expected` (rank 0's view).
std::vector<int> missing_ranks(const std::vector<int64_t>& arrived, int64_t expected) {
  std::vector<int> missing;
  for (size_t r = 1; r < arrived.size(); ++r) {
    if (arrived[r] < expected) missing.push_back(static_cast<int>(r));
  }
  return missing;
}

/// Rank 0's timeout verdict on `comm`, when it has come: throws it (a rank that arrived late
/// finds it waiting, and so ends with the same error instead of a second timeout).
/// (Rank 0 hears it from rank 1, when rank 0 was the late one.)
void throw_verdict_if_any(MPI_Comm comm, int verdict_tag, int rank) {
  const int from = rank == 0 ? 1 : 0;
  int flag = 0;
  MPI_Status st;
  MPI_Iprobe(from, verdict_tag, comm, &flag, &st);
  if (!flag) return;
  int n = 0;
  MPI_Get_count(&st, MPI_CHAR, &n);
  std::string text(static_cast<size_t>(std::max(n, 0)), '\0');
  MPI_Recv(text.data(), n, MPI_CHAR, from, verdict_tag, comm, MPI_STATUS_IGNORE);
  throw TimeoutError(text, /*reporter=*/false);
}

/// The census of one channel (a communicator and its two tags) after a timeout: rank 0 names
/// the ranks whose arrival notices fell short of `expected` and tells every rank (the missing
/// ones too: one that arrives late then ends with the same error at once); the others learn it
/// from rank 0, or name rank 0 when it is the one missing. Throws on every rank that gets here.
[[noreturn]] void census(MPI_Comm comm, int arrive_tag, int verdict_tag, int rank, int size,
                         std::vector<int64_t>& arrived, int64_t expected, const std::string& phase,
                         double timeout, const std::string& operation,
                         const std::vector<std::string>& hosts) {
  const std::string head = operation.empty() ? "" : operation + ": ";
  const std::string tail =
      " did not reach phase '" + phase + "' within " + seconds_str(timeout) + " s";
  drain_notices(comm, arrive_tag, rank, arrived);
  if (rank == 0) {
    std::vector<int> missing = missing_ranks(arrived, expected);
    std::string message =
        head + (missing.empty() ? "the ranks did not complete phase '" + phase + "' within " +
                                      seconds_str(timeout) + " s (every rank arrived; MPI is stuck)"
                                : ranks_phrase(missing, hosts) + tail);
    const std::string& kept = keep(message);
    for (int r = 1; r < size; ++r) {
      const bool late = std::find(missing.begin(), missing.end(), r) != missing.end();
      const std::string& text = late ? keep(message + " (rank " + std::to_string(r) +
                                            " got there after the others had given up)")
                                     : kept;
      MPI_Request req;
      MPI_Isend(text.data(), static_cast<int>(text.size()), MPI_CHAR, r, verdict_tag, comm, &req);
      MPI_Request_free(&req);
    }
    throw TimeoutError(message, /*reporter=*/true);
  }
  if (arrived[0] < expected) {
    const std::string message = head + ranks_phrase({0}, hosts) + tail;
    if (rank == 1) {  // for rank 0, should it get there late
      const std::string& late = keep(message + " (rank 0 got there after the others had given up)");
      MPI_Request req;
      MPI_Isend(late.data(), static_cast<int>(late.size()), MPI_CHAR, 0, verdict_tag, comm, &req);
      MPI_Request_free(&req);
    }
    throw TimeoutError(message, /*reporter=*/true);
  }
  // Rank 0 arrived, so its own deadline ends at most one timeout after ours: wait for its word.
  Poller poll;
  while (poll.elapsed() < timeout + 5) {
    throw_verdict_if_any(comm, verdict_tag, rank);
    poll.pause();
  }
  throw TimeoutError(
      head + "phase '" + phase + "' did not complete within " + seconds_str(timeout) + " s, and " +
          ranks_phrase({0}, hosts) + ", which holds the census, sent no verdict within " +
          seconds_str(timeout + 5) + " s more: it is stuck, or the network to it is down",
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

StallReportScope::StallReportScope(double seconds, StallCallback callback)
    : seconds_(seconds), callback_(std::move(callback)), outer_(stall_scope) {
  stall_scope = this;
}

StallReportScope::~StallReportScope() { stall_scope = outer_; }

Communicator::Communicator(MPI_Comm comm, double timeout_seconds, std::string operation)
    : parent_(comm), timeout_(timeout_seconds), operation_(std::move(operation)) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) throw UsageError("MPI is not initialized: call MPI_Init in main()");
  SHARDLOAD_MPI(MPI_Comm_rank(comm, &rank_));
  SHARDLOAD_MPI(MPI_Comm_size(comm, &size_));
  arrived_.assign(rank_ == 0 ? static_cast<size_t>(size_) : 1, 0);
  if (stall_scope) {
    stall_setting_ = stall_scope->seconds_;
    stall_callback_ = stall_scope->callback_;
  }
  // Until the names are gathered below, messages name the hosts this process already knows.
  hosts_ = cached_hosts(comm, rank_, size_);

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
  std::vector<int64_t> dup_arrived(arrived_.size(), 0);
  const double stall = stall_seconds();
  bool stall_reported = false;
  Poller poll;
  for (;;) {
    int done = 0;
    SHARDLOAD_MPI(MPI_Testall(2, dups, &done, MPI_STATUSES_IGNORE));
    if (done) break;
    const double waited = poll.elapsed();
    if (size_ > 1 && waited > 0.05) throw_verdict_if_any(comm, kDupVerdict, rank_);  // late
    if (timeout_ > 0 && waited > timeout_) {
      broken_ = true;
      census(comm, kDupArrive, kDupVerdict, rank_, size_, dup_arrived, 1, phase_, timeout_,
             operation_, hosts_);
    }
    if (stall > 0 && waited > stall && !stall_reported) {
      stall_reported = true;
      drain_notices(comm, kDupArrive, rank_, dup_arrived);
      if (rank_ == 0) {
        emit_stall(missing_ranks(dup_arrived, 1), waited, "");
      } else if (dup_arrived[0] < 1) {
        emit_stall({0}, waited, "");
      } else {
        emit_stall({}, waited, "rank 0 has arrived and knows which ranks are missing");
      }
    }
    poll.pause();
  }
  // Every rank sent its notice before its idup, so they are all here (or in flight): take them.
  int64_t expected = rank_ == 0 ? size_ - 1 : 1;
  for (int64_t n : dup_arrived) expected -= n;
  for (int64_t i = 0; i < expected; ++i) {
    int64_t v = 0;
    SHARDLOAD_MPI(MPI_Recv(&v, 1, MPI_INT64_T, rank_ == 0 ? MPI_ANY_SOURCE : 0, kDupArrive, comm,
                           MPI_STATUS_IGNORE));
  }
  SHARDLOAD_MPI(MPI_Waitall(static_cast<int>(notices.size()), notices.data(), MPI_STATUSES_IGNORE));
  SHARDLOAD_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  SHARDLOAD_MPI(MPI_Comm_set_errhandler(census_, MPI_ERRORS_RETURN));

  // Every rank's host name, once: one fixed-size allgather under the deadline.
  std::string mine = this_host();
  mine.resize(kHostBytes, '\0');
  std::string all(kHostBytes * static_cast<size_t>(size_), '\0');
  guarded("MPI_Iallgather", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Iallgather(mine.data(), static_cast<int>(kHostBytes), MPI_CHAR, all.data(),
                                 static_cast<int>(kHostBytes), MPI_CHAR, comm_, req));
  });
  // Node-local rank and size from MPI itself (the ranks that can share memory), never from a
  // launcher's variables: every rank has just taken part in the gather above.
  MPI_Comm node = MPI_COMM_NULL;
  SHARDLOAD_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  SHARDLOAD_MPI(MPI_Comm_rank(node, &local_rank_));
  SHARDLOAD_MPI(MPI_Comm_size(node, &local_size_));
  MPI_Comm_free(&node);
  auto world = world_ranks_of(comm_, size_);
  std::lock_guard<std::mutex> lock(host_cache_mutex);
  for (size_t r = 0; r < static_cast<size_t>(size_); ++r) {
    hosts_[r] = std::string(all.c_str() + r * kHostBytes);
    if (world[r] >= 0) host_cache()[world[r]] = hosts_[r];
  }
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
  for (auto* list : {&sends_, &stall_sends_}) {
    for (auto& req : *list) {
      if (req != MPI_REQUEST_NULL) MPI_Request_free(&req);
    }
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
  // Stall notices of collectives that have completed (they may arrive after the completion) are
  // dropped; one of the current collective is kept for take_stall_notice: this rank may be
  // about to report its own stall (report_collective_stall drains first), and rank 0's notice
  // may have come a moment before.
  for (int flag = 1; rank_ != 0 && flag;) {
    MPI_Status st;
    MPI_Iprobe(0, kStall, census_, &flag, &st);
    if (!flag) break;
    int n = 0;
    MPI_Get_count(&st, MPI_CHAR, &n);
    std::string text(static_cast<size_t>(std::max(n, 0)), '\0');
    MPI_Recv(text.data(), n, MPI_CHAR, 0, kStall, census_, MPI_STATUS_IGNORE);
    if (text.rfind(std::to_string(seq_) + "\n", 0) == 0) early_notice_ = std::move(text);
  }
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
  census(census_, kArrive, kVerdict, rank_, size_, arrived_, seq_, phase_, timeout_, operation_,
         hosts_);
}

std::string Communicator::name_ranks(const std::vector<int>& ranks) const {
  return ranks_phrase(ranks, hosts_);
}

double Communicator::stall_seconds() const {
  if (stall_setting_ >= 0) return stall_setting_;
  if (const char* env = std::getenv("SHARDLOAD_STALL_REPORT_SECONDS")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && v >= 0) return v;
  }
  return timeout_ > 0 ? std::min(30.0, timeout_ / 4) : 30.0;
}

void Communicator::emit_stall(std::vector<int> missing, double waited,
                              const std::string& detail) const {
  StallReport report;
  report.rank = rank_;
  report.host = hosts_[static_cast<size_t>(rank_)];
  report.operation = operation_;
  report.phase = phase_;
  report.waited_seconds = waited;
  report.timeout_seconds = timeout_;
  for (int r : missing) report.hosts.push_back(hosts_[static_cast<size_t>(r)]);
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", waited);
  std::string text = "shardload: stall: " + ranks_phrase({rank_}, hosts_) + ": " +
                     (operation_.empty() ? "" : operation_ + ": ") + "phase '" + phase_ +
                     "' has waited " + secs + " s";
  if (!missing.empty()) {
    text += " for " + ranks_phrase(missing, hosts_);
  } else if (detail.empty()) {
    text += "; every rank arrived (MPI is slow or stuck)";
  }
  if (!detail.empty())
    text += (missing.empty() ? "; " : " (") + detail + (missing.empty() ? "" : ")");
  text += timeout_ > 0 ? " (timeout " + seconds_str(timeout_) + " s)" : " (no timeout)";
  report.waiting_for = std::move(missing);
  report.message = text;
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
  if (stall_callback_) {
    try {
      stall_callback_(report);
    } catch (...) {
      // A report must not change the collective's course.
    }
  }
}

void Communicator::report_collective_stall(double waited) const {
  drain_arrivals();
  if (rank_ == 0) {
    std::vector<int> missing = missing_ranks(arrived_, seq_);
    // Tell the ranks that are waiting too (they cannot see the others' arrivals).
    std::string notice = std::to_string(seq_) + "\n";
    for (size_t i = 0; i < missing.size(); ++i) {
      notice += (i ? "," : "") + std::to_string(missing[i]);
    }
    stall_notices_.push_back(notice);
    const std::string& kept = stall_notices_.back();
    for (int r = 1; r < size_; ++r) {
      if (std::find(missing.begin(), missing.end(), r) != missing.end()) continue;
      stall_sends_.emplace_back();
      MPI_Isend(kept.data(), static_cast<int>(kept.size()), MPI_CHAR, r, kStall, census_,
                &stall_sends_.back());
    }
    emit_stall(std::move(missing), waited, "");
    return;
  }
  if (arrived_[0] < seq_) emit_stall({0}, waited, "");
}

bool Communicator::take_stall_notice(double waited) const {
  for (;;) {
    std::string text = std::move(early_notice_);
    early_notice_.clear();
    if (text.empty()) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(0, kStall, census_, &flag, &st);
      if (!flag) return false;
      int n = 0;
      MPI_Get_count(&st, MPI_CHAR, &n);
      text.assign(static_cast<size_t>(std::max(n, 0)), '\0');
      MPI_Recv(text.data(), n, MPI_CHAR, 0, kStall, census_, MPI_STATUS_IGNORE);
    }
    const size_t nl = text.find('\n');
    if (nl == std::string::npos || text.substr(0, nl) != std::to_string(seq_)) continue;  // old
    std::vector<int> missing;
    for (size_t at = nl + 1; at < text.size();) {
      size_t comma = text.find(',', at);
      if (comma == std::string::npos) comma = text.size();
      missing.push_back(std::atoi(text.substr(at, comma - at).c_str()));
      at = comma + 1;
    }
    emit_stall(std::move(missing), waited, "");
    return true;
  }
}

void Communicator::report_stalled(double waited, int64_t wait_id, const std::vector<int>& peers,
                                  const std::string& what) const {
  const double stall = stall_seconds();
  if (stall <= 0 || waited <= stall || stall_reported_wait_ == wait_id) return;
  stall_reported_wait_ = wait_id;
  emit_stall(peers, waited, what);
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
  const double stall = stall_seconds();
  // 0: not yet reported; 1: rank 0 (or a missing rank 0) reported; 2: waiting for rank 0's
  // notice; 3: done.
  int stall_state = 0;
  Poller poll;
  for (;;) {
    int done = 0;
    int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      broken_ = true;
      check_mpi(rc, what);
    }
    if (done) break;
    const double waited = poll.elapsed();
    if (size_ > 1 && waited > 0.05) {
      try {
        throw_verdict_if_any(census_, kVerdict, rank_);  // the others gave up: we are late
      } catch (...) {
        broken_ = true;
        throw;
      }
    }
    if (timeout_ > 0 && waited > timeout_) census_and_throw(what);
    if (stall > 0 && waited > stall && stall_state != 3) {
      if (stall_state == 0) {
        report_collective_stall(waited);
        stall_state = rank_ == 0 || arrived_[0] < seq_ ? 3 : 2;
      } else if (take_stall_notice(waited)) {
        stall_state = 3;
      } else if (waited > 2 * stall) {
        emit_stall({}, waited, "rank 0 has arrived but has not said which ranks are missing");
        stall_state = 3;
      }
    }
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

void Communicator::allreduce_or(std::vector<uint8_t>& bits) const {
  if (bits.size() > static_cast<size_t>(INT_MAX)) {
    throw CommError("allreduce_or: " + std::to_string(bits.size()) + " bytes in one call");
  }
  guarded("MPI_Iallreduce", [&](MPI_Request* req) {
    SHARDLOAD_MPI(MPI_Iallreduce(MPI_IN_PLACE, bits.data(), static_cast<int>(bits.size()),
                                 MPI_UINT8_T, MPI_BOR, comm_, req));
  });
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
  std::string who = peers.empty() ? "the other ranks" : ranks_phrase(peers, hosts_);
  throw TimeoutError(
      (operation_.empty() ? "" : operation_ + ": ") + who + " made no progress in phase '" +
          phase_ + "' within " + seconds_str(timeout_) + " s (" + what + ")",
      /*reporter=*/rank_ == 0 || std::find(peers.begin(), peers.end(), 0) != peers.end());
}

}  // namespace shardload
