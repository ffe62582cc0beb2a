// The control plane between ranks: small collectives over MPI (index exchange, status
// reductions), each watched by a deadline. Every MPI call of shardload lives in transport/.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

namespace shardload {

/// Throws CommError("<what> failed: <MPI error string>") when `rc` is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);
#define SHARDLOAD_MPI(call) ::shardload::check_mpi((call), #call)

/// This process's rank among the ranks of `comm` on its node (MPI_Comm_split_type with
/// MPI_COMM_TYPE_SHARED), for choosing a device without a launcher's variables. Collective over
/// `comm` (blocking: call it where every rank arrives, e.g. at start-up).
int node_local_rank(MPI_Comm comm);

/// Waits for a condition by polling: a short busy phase (yielding the core), then sleeps that
/// grow to 1 ms, so that a rank waiting for a slow peer neither burns a core for long nor adds
/// latency to quick collectives.
class Poller {
 public:
  /// One wait step; call between polls.
  void pause();
  /// Seconds since the poller was made (or reset).
  double elapsed() const;
  void reset();

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  int64_t polls_ = 0;
};

/// What a rank waiting in a stalled collective is told (see Communicator, "Stall reports").
struct StallReport {
  int rank = 0;                  ///< the waiting rank (in the communicator)
  std::string host;              ///< its host
  std::string operation;         ///< "shardload::load(ckpt)"
  std::string phase;             ///< "plan", "transfer", ...
  std::vector<int> waiting_for;  ///< ranks that have not arrived (empty: all arrived, MPI is slow)
  std::vector<std::string> hosts;  ///< the host of each of them ("" when not known)
  double waited_seconds = 0;
  double timeout_seconds = 0;  ///< <= 0: none
  std::string message;         ///< the line printed on stderr
};
using StallCallback = std::function<void(const StallReport&)>;

/// The stall-report threshold and callback of every Communicator constructed on this thread
/// while the scope lives (the innermost scope wins). `seconds` < 0: the default, min(30 s,
/// timeout / 4) (or the environment's SHARDLOAD_STALL_REPORT_SECONDS); 0: no reports. Not
/// collective (but all ranks should use the same value).
class StallReportScope {
 public:
  StallReportScope(double seconds, StallCallback callback);
  ~StallReportScope();
  StallReportScope(const StallReportScope&) = delete;
  StallReportScope& operator=(const StallReportScope&) = delete;

 private:
  double seconds_;
  StallCallback callback_;
  const StallReportScope* outer_;
  friend class Communicator;
};

/// A private duplicate of the caller's communicator, with errors returned rather than fatal.
///
/// Collective: all ranks of `comm` construct it together, and call every method in the same
/// order (each method is one collective unless it says otherwise).
///
/// Deadlines: every collective is issued non-blocking and polled. Each rank also announces its
/// arrival at every collective to rank 0 (and rank 0 to every rank) on a second private
/// communicator. When a collective has not completed within the timeout, rank 0 knows which ranks
/// never arrived and tells the others; every live rank then throws the same TimeoutError:
/// "rank 1 did not reach phase 'open' within 20 s". When rank 0 itself is the one missing, the
/// others name it. Every rank is named with its host ("rank 1 (host node7)"): the host names are
/// gathered once, in the constructor.
///
/// Stall reports: when a collective has waited longer than the stall threshold (below the
/// timeout; see StallReportScope), every waiting rank prints one line on stderr naming the
/// ranks (and hosts) that have not arrived and the phase, and calls the scope's callback: rank 0
/// knows who is missing and tells the waiting ranks, so that the culprit is known before the
/// timeout ends the operation.
class Communicator {
 public:
  /// `timeout_seconds` <= 0: wait forever. `operation` starts the timeout messages of the
  /// construction itself (see set_operation).
  explicit Communicator(MPI_Comm comm, double timeout_seconds = 0, std::string operation = {});
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  /// This rank among the ranks of its node (those that can share memory:
  /// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)), and their number: the device a rank uses is
  /// local_rank() % visible devices, its reader threads the node's cores / local_size().
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  MPI_Comm handle() const { return comm_; }
  /// The caller's communicator this one duplicates (for caching per-communicator state).
  MPI_Comm parent() const { return parent_; }
  /// The host name of `rank` (gethostname() there), gathered at construction.
  const std::string& host(int rank) const { return hosts_[static_cast<size_t>(rank)]; }
  /// "rank 1 (host node7)", "ranks 2, 3 (host node7) and 5 (host node8)". Not collective.
  std::string name_ranks(const std::vector<int>& ranks) const;

  /// The deadline of every later collective; <= 0 waits forever. Not collective (but all ranks
  /// should use the same value).
  void set_timeout(double seconds) { timeout_ = seconds; }
  double timeout() const { return timeout_; }
  /// The phase that timeout messages name ("open", "transfer", ...). Not collective.
  void set_phase(std::string phase) const { phase_ = std::move(phase); }
  const std::string& phase() const { return phase_; }
  /// The operation that timeout messages start with ("shardload::load(ckpt)"). Not collective.
  void set_operation(std::string operation) const { operation_ = std::move(operation); }

  /// Every rank's bytes, indexed by rank (MPI_Allgatherv). When any rank's contribution or the
  /// total exceeds what one MPI call moves (2 GiB), every rank throws the same CommError.
  std::vector<std::string> allgather(const std::string& mine) const;
  /// Every rank's value, indexed by rank.
  std::vector<int64_t> allgather(int64_t mine) const;
  int64_t allreduce_sum(int64_t value) const;
  int64_t allreduce_max(int64_t value) const;
  double allreduce_max(double value) const;
  /// The bitwise OR of every rank's `bits` (the same length on every rank), in place.
  void allreduce_or(std::vector<uint8_t>& bits) const;
  /// `root`'s bytes on every rank (any size).
  void broadcast(std::string& bytes, int root) const;
  void barrier() const;
  /// A new duplicate of the communicator, for a transport's own traffic (MPI_Comm_idup under the
  /// deadline). The caller frees it.
  MPI_Comm duplicate() const;

  /// Throws the TimeoutError of a stalled point-to-point or data-plane wait that waited on
  /// `peers` (ranks this rank needed something from). Not collective: the transfer calls it when
  /// it made no progress within the timeout; it names the peers and the phase.
  [[noreturn]] void throw_stalled(const std::vector<int>& peers, const std::string& what) const;
  /// The stall report of a point-to-point or data-plane wait that has made no progress for
  /// `waited` seconds, waiting on `peers`: reported once per `wait_id` (any number that changes
  /// when the wait is another one) when `waited` passes the stall threshold. Not collective;
  /// cheap to call on every poll.
  void report_stalled(double waited, int64_t wait_id, const std::vector<int>& peers,
                      const std::string& what) const;
  /// The stall threshold in force (seconds; 0: no reports).
  double stall_seconds() const;

 private:
  /// Issues `start` (a non-blocking collective filling the request) after announcing this
  /// rank's arrival, and polls it against the deadline.
  void guarded(const char* what, const std::function<void(MPI_Request*)>& start) const;
  void announce() const;
  void drain_arrivals() const;
  [[noreturn]] void census_and_throw(const char* what) const;
  /// The stall report of collective seq_ after `waited` seconds (called once per collective).
  void report_collective_stall(double waited) const;
  /// Rank != 0: takes rank 0's stall notice of the current collective, if it came.
  bool take_stall_notice(double waited) const;
  void emit_stall(std::vector<int> missing, double waited, const std::string& detail) const;

  MPI_Comm parent_ = MPI_COMM_NULL;  ///< the caller's
  MPI_Comm comm_ = MPI_COMM_NULL;    ///< the collectives
  MPI_Comm census_ = MPI_COMM_NULL;  ///< arrival notices and timeout verdicts only
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  double timeout_ = 0;
  mutable std::string phase_ = "start";
  mutable std::string operation_;
  mutable int64_t seq_ = 0;  ///< collectives issued so far (the same on every rank)
  /// Rank 0: the latest collective each rank announced; other ranks: [0] is rank 0's.
  mutable std::vector<int64_t> arrived_;
  mutable std::deque<int64_t> send_buffers_;  ///< arrival notices in flight
  mutable std::vector<MPI_Request> sends_;
  mutable bool broken_ = false;  ///< a collective timed out: never wait on this communicator again
  std::vector<std::string> hosts_;  ///< by rank
  double stall_setting_ = -1;       ///< from the StallReportScope; < 0: the default
  StallCallback stall_callback_;
  mutable int64_t stall_reported_wait_ = -1;       ///< report_stalled's last wait_id
  mutable std::deque<std::string> stall_notices_;  ///< rank 0: notices in flight
  /// Rank != 0: rank 0's notice of the current collective, taken while draining.
  mutable std::string early_notice_;
  mutable std::vector<MPI_Request> stall_sends_;
};

}  // namespace shardload
