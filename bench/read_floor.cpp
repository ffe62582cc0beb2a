// The machine's limit for a read-once load, measured the plain way: P ranks read disjoint parts
// of the checkpoint's files in parallel (pread into one buffer per rank) and, for a replicated
// load, exchange them with plain MPI so that every rank ends up with every byte. No checksums,
// no plan, no copies into tensors: a floor no loader that reads each byte once can beat.
//
//   mpirun -np P read_floor [--exchange] [--repeat N] [--cold] FILE...
//
// Prints one JSON line from rank 0: {"seconds": median, "bytes": total, "ranks": P,
// "exchange": bool}. --cold evicts the files from the page cache before each run
// (posix_fadvise DONTNEED after fsync).
#include <fcntl.h>
#include <mpi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
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
  bool exchange = false, cold = false;
  int repeat = 5;
  std::vector<File> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--exchange") {
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
  // Rank r reads bytes [r*total/P, (r+1)*total/P); with --exchange every rank gets them all.
  std::vector<int64_t> begin(static_cast<size_t>(ranks) + 1);
  for (int r = 0; r <= ranks; ++r) begin[static_cast<size_t>(r)] = total * r / ranks;
  std::vector<char> all(static_cast<size_t>(exchange ? total : begin[rank + 1] - begin[rank]) + 1);
  std::vector<double> times;
  for (int k = 0; k < repeat; ++k) {
    if (cold && rank == 0) evict(files);
    MPI_Barrier(MPI_COMM_WORLD);
    auto t0 = std::chrono::steady_clock::now();
    char* mine = all.data() + (exchange ? begin[rank] : 0);
    read_range(files, begin[rank], begin[rank + 1], mine);
    if (exchange) {
      // One broadcast per rank's part, in parts MPI counts can hold.
      for (int r = 0; r < ranks; ++r) {
        for (int64_t pos = begin[r]; pos < begin[r + 1]; pos += 1 << 30) {
          const int n = static_cast<int>(std::min<int64_t>(1 << 30, begin[r + 1] - pos));
          MPI_Bcast(all.data() + pos, n, MPI_BYTE, r, MPI_COMM_WORLD);
        }
      }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double worst = 0;
    MPI_Allreduce(&secs, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times.push_back(worst);
  }
  std::sort(times.begin(), times.end());
  if (rank == 0) {
    std::printf("{\"seconds\": %.6f, \"bytes\": %lld, \"ranks\": %d, \"exchange\": %s}\n",
                times[times.size() / 2], static_cast<long long>(total), ranks,
                exchange ? "true" : "false");
  }
  MPI_Finalize();
  return 0;
}
