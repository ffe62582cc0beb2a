#include "transport/launcher.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

#include "shardload/config.h"
#include "transport/job_end.h"

#if SHARDLOAD_WITH_PMIX
#include <pmix.h>
#endif

namespace shardload {
namespace {

std::string own_host() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}

/// What a rank knows of the job without PMIx: the launcher's variables, when it set them.
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

#if SHARDLOAD_WITH_PMIX
/// The key each rank puts before MPI_Init: its presence on a rank's node is the word that the
/// rank has started.
constexpr const char* kStartedKey = "shardload.started";

/// This process's hold on the PMIx client library (reference counted by PMIx: MPI holds its own).
struct Pmix {
  std::timed_mutex mutex;
  bool held = false;
  pmix_proc_t me{};
  bool hosts_loaded = false;
  std::vector<std::string> hosts;
};

Pmix& pmix() {
  static Pmix* p = new Pmix;  // never destroyed: the watchdog may use it while the process exits
  return *p;
}

/// Takes a hold on PMIx when a PMIx launcher started this process. Call with the mutex held.
bool acquire(Pmix& p) {
  if (p.held) return true;
  if (!std::getenv("PMIX_NAMESPACE")) return false;  // not launched through PMIx
  if (PMIx_Init(&p.me, nullptr, 0) != PMIX_SUCCESS) return false;
  p.held = true;
  return true;
}

void release(Pmix& p) {
  if (!p.held) return;
  PMIx_Finalize(nullptr, 0);  // MPI's own hold keeps the library up
  p.held = false;
}

uint32_t job_size(const Pmix& p) {
  pmix_proc_t wild;
  PMIX_LOAD_PROCID(&wild, p.me.nspace, PMIX_RANK_WILDCARD);
  pmix_value_t* v = nullptr;
  uint32_t n = 0;
  if (PMIx_Get(&wild, PMIX_JOB_SIZE, nullptr, 0, &v) == PMIX_SUCCESS && v) {
    if (v->type == PMIX_UINT32) n = v->data.uint32;
    PMIX_VALUE_RELEASE(v);
  }
  return n;
}

/// The host of every rank from the launcher's job data (local: no other node is asked). Call with
/// the mutex held and PMIx held.
void load_hosts(Pmix& p) {
  if (p.hosts_loaded) return;
  const uint32_t n = job_size(p);
  std::vector<std::string> hosts(n);
  pmix_info_t optional;
  PMIX_INFO_LOAD(&optional, PMIX_OPTIONAL, nullptr, PMIX_BOOL);
  for (uint32_t r = 0; r < n; ++r) {
    pmix_proc_t proc;
    PMIX_LOAD_PROCID(&proc, p.me.nspace, r);
    pmix_value_t* v = nullptr;
    if (PMIx_Get(&proc, PMIX_HOSTNAME, &optional, 1, &v) == PMIX_SUCCESS && v) {
      if (v->type == PMIX_STRING && v->data.string) hosts[r] = v->data.string;
      PMIX_VALUE_RELEASE(v);
    }
  }
  PMIX_INFO_DESTRUCT(&optional);
  p.hosts = std::move(hosts);
  p.hosts_loaded = true;
}

/// The answers of a round of non-blocking gets; shared with PMIx's callbacks, and left alive
/// when the round gives up on some (the process is about to exit).
struct Round {
  std::mutex mutex;
  std::condition_variable cv;
  size_t left = 0;
  std::vector<pmix_status_t> status;  // by rank
};

struct Ask {
  std::shared_ptr<Round> round;
  uint32_t rank;
};

void answered(pmix_status_t status, pmix_value_t* /*kv*/, void* cbdata) {
  auto* ask = static_cast<Ask*>(cbdata);
  {
    std::lock_guard<std::mutex> lock(ask->round->mutex);
    ask->round->status[ask->rank] = status;
    --ask->round->left;
  }
  ask->round->cv.notify_all();
  delete ask;
}

/// The ranks whose started key cannot be fetched within `seconds` (asked of every rank at once;
/// a rank behind a cut link or not started yet does not answer). Call with PMIx held.
std::vector<int> unheard_ranks(const Pmix& p, double seconds) {
  const uint32_t n = job_size(p);
  auto round = std::make_shared<Round>();
  round->status.assign(n, PMIX_ERR_TIMEOUT);
  int limit = std::max(1, static_cast<int>(seconds));
  pmix_info_t timeout;
  PMIX_INFO_LOAD(&timeout, PMIX_TIMEOUT, &limit, PMIX_INT);
  for (uint32_t r = 0; r < n; ++r) {
    if (r == p.me.rank) {
      round->status[r] = PMIX_SUCCESS;
      continue;
    }
    pmix_proc_t proc;
    PMIX_LOAD_PROCID(&proc, p.me.nspace, r);
    auto* ask = new Ask{round, r};
    {
      std::lock_guard<std::mutex> lock(round->mutex);
      ++round->left;
    }
    if (PMIx_Get_nb(&proc, kStartedKey, &timeout, 1, answered, ask) != PMIX_SUCCESS) {
      std::lock_guard<std::mutex> lock(round->mutex);
      --round->left;
      delete ask;
    }
  }
  std::unique_lock<std::mutex> lock(round->mutex);
  round->cv.wait_for(lock, std::chrono::duration<double>(limit + 1.0),
                     [&] { return round->left == 0; });
  std::vector<int> unheard;
  for (uint32_t r = 0; r < n; ++r) {
    if (round->status[r] != PMIX_SUCCESS) unheard.push_back(static_cast<int>(r));
  }
  return unheard;
}
#endif

/// The line a rank prints when `what` has not returned within `timeout` seconds.
std::string stuck_line(const char* what, double timeout, const char* absent,
                       [[maybe_unused]] bool ask_launcher) {
  std::string rank = env_or("OMPI_COMM_WORLD_RANK", env_or("PMIX_RANK", "?").c_str());
  std::string size = env_or("OMPI_COMM_WORLD_SIZE", "?");
  std::string host = own_host();
  char secs[32];
  std::snprintf(secs, sizeof secs, "%g", timeout);
  std::string head = "shardload: error: rank " + rank + " of " + size + " (host " + host +
                     ") did not get past " + what + " within " + secs + " s: ";
#if SHARDLOAD_WITH_PMIX
  // The lock is held while this rank talks to the launcher before MPI_Init: when that itself is
  // what hangs, the line names only this rank.
  Pmix& p = pmix();
  std::unique_lock<std::timed_mutex> lock(p.mutex, std::defer_lock);
  if (ask_launcher && lock.try_lock_for(std::chrono::seconds(1))) {
    if (p.held) {
      load_hosts(p);
      const std::vector<int> unheard = unheard_ranks(p, 2.0);
      if (!unheard.empty()) {
        return head + "no word from " + ranks_phrase(unheard, p.hosts) + " (" + absent +
               "); every rank that got this far prints such a line";
      }
      std::vector<std::string> distinct;
      for (const auto& h : p.hosts) {
        if (!h.empty() && std::find(distinct.begin(), distinct.end(), h) == distinct.end()) {
          distinct.push_back(h);
        }
      }
      std::string list;
      for (size_t i = 0; i < distinct.size(); ++i) list += (i ? ", " : "") + distinct[i];
      return head + "every rank of the job has started (the launcher has word from all " +
             std::to_string(p.hosts.size()) +
             "), yet MPI's start-up exchange did not complete: a link between the hosts (" + list +
             ") is down or a rank stopped inside MPI";
    }
  }
#endif
  return head + "another rank is " + absent +
         " (each rank that got there prints this line; the ranks missing from these lines are the "
         "stuck ones)";
}

}  // namespace

const std::vector<std::string>& launcher_hosts() {
#if SHARDLOAD_WITH_PMIX
  Pmix& p = pmix();
  std::lock_guard<std::timed_mutex> lock(p.mutex);
  if (!p.hosts_loaded) {
    // A hold of our own only while MPI holds one too (asking after MPI_Finalize would reconnect a
    // finished process to its daemon).
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    const bool ours = !p.held && initialized && !finalized;
    if (p.held || (ours && acquire(p))) {
      load_hosts(p);
      if (ours) release(p);
    } else {
      p.hosts_loaded = true;  // no launcher to ask: nothing to learn later either
    }
  }
  return p.hosts;
#else
  static const std::vector<std::string> none;
  return none;
#endif
}

void run_job_step_watched(const char* what, double timeout, const std::function<void()>& body,
                          const char* absent) {
  // Set once the launcher has this rank's started key: only then can the watchdog ask it about
  // the others. The watchdog starts first, so that talking to the launcher is under the
  // deadline too.
  std::atomic<bool> ask_launcher{false};
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::thread watchdog;
  if (timeout > 0) {
    watchdog = std::thread([&] {
      {
        std::unique_lock<std::mutex> lock(mutex);
        if (done_cv.wait_for(lock, std::chrono::duration<double>(timeout), [&] { return done; })) {
          return;
        }
      }
      const std::string line = stuck_line(what, timeout, absent, ask_launcher.load());
      std::fprintf(stderr, "%s\n", line.c_str());
      std::fflush(stderr);
      // mpirun ends the job when this rank exits, unless it waits for an unreachable node.
      end_launcher_after(20);
      std::_Exit(3);
    });
  }
#if SHARDLOAD_WITH_PMIX
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // Before MPI_Init: tell the launcher this rank has started, and keep the hold on PMIx until
    // MPI_Init returns, for the watchdog's questions.
    Pmix& p = pmix();
    std::lock_guard<std::timed_mutex> lock(p.mutex);
    if (acquire(p)) {
      int one = 1;
      pmix_value_t value;
      PMIX_VALUE_LOAD(&value, &one, PMIX_INT);
      ask_launcher = PMIx_Put(PMIX_GLOBAL, kStartedKey, &value) == PMIX_SUCCESS &&
                     PMIx_Commit() == PMIX_SUCCESS;
      PMIX_VALUE_DESTRUCT(&value);
    }
  }
#endif
  body();
  if (watchdog.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      done = true;
    }
    done_cv.notify_all();
    watchdog.join();
  }
#if SHARDLOAD_WITH_PMIX
  {
    Pmix& p = pmix();
    std::lock_guard<std::timed_mutex> lock(p.mutex);
    release(p);  // launcher_hosts() asks again, under MPI's hold, when a message needs the hosts
  }
#endif
}

std::string ranks_phrase(const std::vector<int>& ranks, const std::vector<std::string>& hosts) {
  auto host_of = [&](int r) {
    return r >= 0 && static_cast<size_t>(r) < hosts.size() ? hosts[static_cast<size_t>(r)]
                                                           : std::string();
  };
  std::vector<std::pair<std::string, std::vector<int>>> groups;
  for (int r : ranks) {
    const std::string h = host_of(r);
    auto it =
        std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == h; });
    if (it == groups.end()) {
      groups.push_back({h, {r}});
    } else {
      it->second.push_back(r);
    }
  }
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g) s += g + 1 == groups.size() ? " and " : ", ";
    const auto& [h, rs] = groups[g];
    for (size_t i = 0; i < rs.size(); ++i) s += (i ? ", " : "") + std::to_string(rs[i]);
    if (!h.empty()) s += " (host " + h + ")";
  }
  return s;
}

}  // namespace shardload
