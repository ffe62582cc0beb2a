// The machine's limit for a read-once load, measured the plain way: P ranks read disjoint parts
// of the checkpoint's files in parallel (pread into one full-size buffer) and, for a replicated
// load, exchange them with plain MPI so that every rank ends up with every byte. No checksums,
// no plan, no copies into tensors: a floor no loader that reads each byte once can beat.
//
// Several plain programs are run and the fastest is the limit, so that a short program that
// beats the limit cannot exist unnoticed:
//   one-read+bcast    each rank one pread of its part, then one MPI_Bcast per rank's part;
//   blocks+allgather  preads of at most 64 MiB into the rank's part of the buffer, then one
//                     in-place MPI_Allgatherv;
//   pipelined         the parts cut into rounds of 64 MiB ("pipelined"), 8 MiB or 2 MiB: round
//                     k+1 is read while round k is broadcast (MPI_Ibcast), so reading and
//                     exchanging overlap;
//   staged            rounds of 8 or 2 MiB read into one of two small staging blocks, broadcast
//                     from there and copied into the rank's own buffer: a copy more, but the
//                     bytes cross between ranks while they are in the shared cache.
// Without --exchange (a split load) each rank only reads its part, in 64 MiB preads. With --copy
// (a split load) each rank reads its part through a staging block into a separate destination
// buffer: preads of one block, then one memcpy of it (blocks of 1, 8 and 64 MiB, the fastest
// wins: a block the size of the core's cache is copied while it is still there),
// the least a loader that verifies bytes before they reach a tensor does. Every buffer is
// page-aligned (Buffer).
//
//   mpirun -np P read_floor [--exchange | --copy] [--repeat N] [--cold] FILE...
//
// Prints one JSON line from rank 0: {"seconds": median of the fastest program, "bytes": total,
// "ranks": P, "exchange": bool, "method": its name, "methods": {name: median}}. --cold evicts
// the files from the page cache before each run (posix_fadvise DONTNEED after fsync).
#include <fcntl.h>
#include <mpi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

struct File {
  std::string path;
  int64_t size = 0;
};

void evict(const std::vector<File>& files) {
  for (const File& f : files) {
    int fd = ::open(f.path.c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

/// Page-aligned memory, its pages touched: a loader's tensors and staging are at least
/// cache-line aligned (PyTorch's allocator: 64 bytes), and where the destination of a pread lies
/// within its cache line decides the kernel copy's speed (four to seven times slower 4-28 bytes
/// past the source's place on this project's AMD machines, bench/copy_paths): a vector's
/// malloc'd memory, 16 bytes past a page, would measure that quirk, not the limit.
struct Buffer {
  explicit Buffer(size_t n = 0)
      : bytes(static_cast<char*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096 + 4096))),
        size(n) {
    std::memset(bytes, 1, (n + 4095) / 4096 * 4096 + 4096);
  }
  ~Buffer() { std::free(bytes); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  char* data() { return bytes; }
  char* bytes;
  size_t size;
};

/// Reads bytes [begin, end) of the concatenation of `files` into `dst`.
void read_range(const std::vector<File>& files, int64_t begin, int64_t end, char* dst) {
  int64_t base = 0;
  for (const File& f : files) {
    const int64_t lo = std::max(begin, base), hi = std::min(end, base + f.size);
    if (lo < hi) {
      int fd = ::open(f.path.c_str(), O_RDONLY);
      if (fd < 0) {
        std::perror(f.path.c_str());
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      int64_t done = 0;
      while (done < hi - lo) {
        ssize_t n = ::pread(fd, dst + (lo - begin) + done, static_cast<size_t>(hi - lo - done),
                            lo - base + done);
        if (n <= 0) {
          std::perror("pread");
          MPI_Abort(MPI_COMM_WORLD, 1);
        }
        done += n;
      }
      ::close(fd);
    }
    base += f.size;
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  bool exchange = false, copy = false, cold = false;
  int repeat = 5;
  std::vector<File> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--copy") {
      copy = true;
    } else if (a == "--exchange") {
      exchange = true;
    } else if (a == "--cold") {
      cold = true;
    } else if (a == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
    } else {
      struct stat st {};
      if (::stat(a.c_str(), &st) != 0) {
        std::perror(a.c_str());
        MPI_Abort(MPI_COMM_WORLD, 2);
      }
      files.push_back({a, st.st_size});
    }
  }
  int64_t total = 0;
  for (const File& f : files) total += f.size;
  // Rank r reads bytes [begin[r], begin[r+1]); with --exchange every rank gets them all.
  std::vector<int64_t> begin(static_cast<size_t>(ranks) + 1);
  for (int r = 0; r <= ranks; ++r) begin[static_cast<size_t>(r)] = total * r / ranks;
  const int64_t mine_bytes = begin[rank + 1] - begin[rank];
  const int64_t buffer_bytes = exchange ? total : mine_bytes;
  // One buffer, its pages touched before anything is timed (a loader's tensors exist already).
  Buffer all(static_cast<size_t>(buffer_bytes));
  constexpr int64_t kBlock = int64_t{64} << 20;
  auto read_blocks = [&](int64_t from, int64_t to, char* dst) {
    for (int64_t pos = from; pos < to; pos += kBlock) {
      read_range(files, pos, std::min(to, pos + kBlock), dst + (pos - from));
    }
  };

  struct Run {
    const char* name;
    std::function<void()> body;
  };
  std::vector<Run> runs;
  std::unique_ptr<Buffer> staging;
  if (copy && !exchange) {
    staging = std::make_unique<Buffer>(static_cast<size_t>(std::min(mine_bytes, kBlock)));
    const std::pair<int64_t, const char*> blocks[] = {{int64_t{1} << 20, "blocks+copy 1 MiB"},
                                                      {int64_t{8} << 20, "blocks+copy 8 MiB"},
                                                      {kBlock, "blocks+copy 64 MiB"}};
    for (const auto& [block, name] : blocks) {
      runs.push_back({name, [&, block] {
                        const int64_t from = begin[rank], to = begin[rank + 1];
                        for (int64_t pos = from; pos < to; pos += block) {
                          const int64_t end = std::min(to, pos + block);
                          read_range(files, pos, end, staging->data());
                          std::memcpy(all.data() + (pos - from), staging->data(),
                                      static_cast<size_t>(end - pos));
                        }
                      }});
    }
  } else if (!exchange) {
    runs.push_back(
        {"one-read", [&] { read_range(files, begin[rank], begin[rank + 1], all.data()); }});
    runs.push_back({"blocks", [&] { read_blocks(begin[rank], begin[rank + 1], all.data()); }});
  } else {
    runs.push_back({"one-read+bcast", [&] {
                      read_range(files, begin[rank], begin[rank + 1], all.data() + begin[rank]);
                      for (int r = 0; r < ranks; ++r) {
                        for (int64_t pos = begin[r]; pos < begin[r + 1]; pos += 1 << 30) {
                          const int n =
                              static_cast<int>(std::min<int64_t>(1 << 30, begin[r + 1] - pos));
                          MPI_Bcast(all.data() + pos, n, MPI_BYTE, r, MPI_COMM_WORLD);
                        }
                      }
                    }});
    // Round k of rank r: bytes [begin[r] + k*round, ...) of its part, at most `round`.
    auto block = [&](int r, int64_t k, int64_t round) {
      const int64_t lo = std::min(begin[r + 1], begin[r] + k * round);
      return std::pair<int64_t, int64_t>(lo, std::min(begin[r + 1], lo + round));
    };
    auto rounds_of = [&](int64_t round) {
      int64_t rounds = 1;
      for (int r = 0; r < ranks; ++r) {
        rounds = std::max(rounds, (begin[r + 1] - begin[r] + round - 1) / round);
      }
      return rounds;
    };
    if (total < (int64_t{1} << 31)) {  // Allgatherv's displacements are ints
      runs.push_back({"blocks+allgather", [&] {
                        read_blocks(begin[rank], begin[rank + 1], all.data() + begin[rank]);
                        std::vector<int> counts(static_cast<size_t>(ranks)),
                            displs(static_cast<size_t>(ranks));
                        for (int r = 0; r < ranks; ++r) {
                          counts[static_cast<size_t>(r)] =
                              static_cast<int>(begin[r + 1] - begin[r]);
                          displs[static_cast<size_t>(r)] = static_cast<int>(begin[r]);
                        }
                        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_BYTE, all.data(), counts.data(),
                                       displs.data(), MPI_BYTE, MPI_COMM_WORLD);
                      }});
    }
    // Pipelined in rounds of 64, 8 and 2 MiB: round k's broadcasts (every owner's block k) move
    // while this rank reads its block k+1, in preads of at most 8 MiB with MPI progress between
    // them. Small rounds are exchanged while the bytes just read are still in the shared cache.
    const std::pair<int64_t, const char*> pipelines[] = {{kBlock, "pipelined"},
                                                         {int64_t{8} << 20, "pipelined 8 MiB"},
                                                         {int64_t{2} << 20, "pipelined 2 MiB"}};
    for (const auto& [round, name] : pipelines) {
      runs.push_back({name, [&, block, rounds_of, round] {
                        const int64_t rounds = rounds_of(round);
                        std::vector<MPI_Request> reqs(static_cast<size_t>(ranks));
                        auto [lo0, hi0] = block(rank, 0, round);
                        read_range(files, lo0, hi0, all.data() + lo0);
                        for (int64_t k = 0; k < rounds; ++k) {
                          for (int r = 0; r < ranks; ++r) {
                            const auto [lo, hi] = block(r, k, round);
                            MPI_Ibcast(all.data() + lo, static_cast<int>(hi - lo), MPI_BYTE, r,
                                       MPI_COMM_WORLD, &reqs[static_cast<size_t>(r)]);
                          }
                          if (k + 1 < rounds) {
                            const auto [lo, hi] = block(rank, k + 1, round);
                            for (int64_t pos = lo; pos < hi; pos += 8 << 20) {
                              read_range(files, pos, std::min(hi, pos + (8 << 20)),
                                         all.data() + pos);
                              int flag = 0;
                              MPI_Testall(ranks, reqs.data(), &flag, MPI_STATUSES_IGNORE);
                            }
                          }
                          MPI_Waitall(ranks, reqs.data(), MPI_STATUSES_IGNORE);
                        }
                      }});
    }
    // Staged in rounds of 8 or 2 MiB: each rank reads its block of round k into one of two
    // staging blocks, broadcasts it from there (its peers receive straight into their buffers)
    // and copies it into its own buffer while it is still in the cache; round k+1 is read while
    // round k moves. A copy more than the programs above, but every byte that crosses between
    // ranks is read from the cache, not from memory.
    const std::pair<int64_t, const char*> staged[] = {{int64_t{8} << 20, "staged 8 MiB"},
                                                      {int64_t{2} << 20, "staged 2 MiB"}};
    for (const auto& [round, name] : staged) {
      runs.push_back(
          {name, [&, block, rounds_of, round] {
             const int64_t rounds = rounds_of(round);
             Buffer stage(2 * static_cast<size_t>(round));
             std::vector<MPI_Request> reqs(2 * static_cast<size_t>(ranks), MPI_REQUEST_NULL);
             for (int64_t k = 0; k < rounds; ++k) {
               MPI_Request* mine = reqs.data() + (k % 2) * ranks;
               // The staging block of round k - 2 is free once its round moved.
               MPI_Waitall(ranks, mine, MPI_STATUSES_IGNORE);
               char* buf = stage.data() + (k % 2) * round;
               const auto [lo, hi] = block(rank, k, round);
               read_range(files, lo, hi, buf);
               for (int r = 0; r < ranks; ++r) {
                 const auto [rlo, rhi] = block(r, k, round);
                 MPI_Ibcast(r == rank ? buf : all.data() + rlo, static_cast<int>(rhi - rlo),
                            MPI_BYTE, r, MPI_COMM_WORLD, &mine[r]);
               }
               std::memcpy(all.data() + lo, buf, static_cast<size_t>(hi - lo));
               int flag = 0;
               MPI_Testall(2 * ranks, reqs.data(), &flag, MPI_STATUSES_IGNORE);
             }
             MPI_Waitall(2 * ranks, reqs.data(), MPI_STATUSES_IGNORE);
           }});
    }
  }
  std::map<std::string, std::vector<double>> times;
  for (int k = 0; k < repeat; ++k) {
    for (const Run& run : runs) {
      if (cold && rank == 0) evict(files);
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = std::chrono::steady_clock::now();
      run.body();
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double worst = 0;
      MPI_Allreduce(&secs, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      times[run.name].push_back(worst);
    }
  }
  std::string best;
  double best_s = 0;
  std::string methods;
  for (auto& [name, t] : times) {
    std::sort(t.begin(), t.end());
    const double median = t[t.size() / 2];
    if (best.empty() || median < best_s) {
      best = name;
      best_s = median;
    }
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s\"%s\": %.6f", methods.empty() ? "" : ", ", name.c_str(),
                  median);
    methods += buf;
  }
  if (rank == 0) {
    std::printf(
        "{\"seconds\": %.6f, \"bytes\": %lld, \"ranks\": %d, \"exchange\": %s, \"copy\": %s, "
        "\"method\": \"%s\", \"methods\": {%s}}\n",
        best_s, static_cast<long long>(total), ranks, exchange ? "true" : "false",
        copy && !exchange ? "true" : "false", best.c_str(), methods.c_str());
  }
  MPI_Finalize();
  return 0;
}
