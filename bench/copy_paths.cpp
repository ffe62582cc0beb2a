// The two copies of a load's bytes on one core, each against its alternative, alternating:
//
//   pread   a warm file read in 8 MiB preads into a staging block whose start lies 0, 4, ... 60
//           bytes past a cache line (the file's bytes start on one): the kernel's copy against
//           where the destination lies (loader/transfer/staging_arena.h: kRingAlign);
//   land    256 MiB landed from an 8 MiB block still in the cache into cold memory, as the
//           reading rank lands its own copy: memcpy against copy_past_cache (land.h);
//   hash    XXH3 (io/checksum.h) over 1 GiB in 1 MiB calls, from a 256 KiB, an 8 MiB and a
//           64 MiB buffer: from the core's L2, from the shared L3, from memory (why verified
//           reads hash each 256 KiB step right after reading it: io/chunk_bytes.cpp).
//
// Usage: build/bench/copy_paths FILE [rounds]   (FILE: at least 64 MiB, read warm; a shard file)
// Prints per round: ms per 64 MiB read at each place; ms of each landing of 256 MiB; GB/s hashed.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "io/checksum.h"
#include "loader/transfer/land.h"

namespace {

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

char* touched(size_t bytes) {
  auto* p = static_cast<char*>(std::aligned_alloc(4096, bytes));
  std::memset(p, 1, bytes);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE [rounds]\n", argv[0]);
    return 2;
  }
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 3;
  const int fd = ::open(argv[1], O_RDONLY);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_size < (int64_t{64} << 20)) {
    std::fprintf(stderr, "%s: not a readable file of 64 MiB or more\n", argv[1]);
    return 2;
  }
  const size_t block = size_t{8} << 20, file_bytes = size_t{64} << 20,
               land_bytes = size_t{256} << 20;
  char* stage = touched(block + 4096);
  char* cold = touched(land_bytes);
  for (size_t pos = 0; pos < file_bytes; pos += block) {  // warm the file's pages
    if (::pread(fd, stage, block, static_cast<off_t>(pos)) != static_cast<ssize_t>(block)) {
      std::perror("pread");
      return 1;
    }
  }
  for (int r = 0; r < rounds; ++r) {
    std::printf("round %d\n  pread, ms per 64 MiB by the destination's place:", r);
    for (size_t at = 0; at < 64; at += 4) {
      const auto t = std::chrono::steady_clock::now();
      for (size_t pos = 0; pos < file_bytes; pos += block) {
        if (::pread(fd, stage + at, block, static_cast<off_t>(pos)) !=
            static_cast<ssize_t>(block)) {
          std::perror("pread");
          return 1;
        }
      }
      std::printf(" %zu:%.1f", at, ms_since(t));
    }
    double plain = 0, past = 0;
    for (int k = 0; k < 2; ++k) {
      const auto t = std::chrono::steady_clock::now();
      for (size_t pos = 0; pos < land_bytes; pos += block) {
        stage[0] = static_cast<char>(pos);  // the block is rewritten, as each read rewrites it
        if (k == 0) {
          std::memcpy(cold + pos, stage, block);
        } else {
          shardload::copy_past_cache(cold + pos, stage, block);
        }
      }
      (k == 0 ? plain : past) = ms_since(t);
    }
    std::printf("\n  land 256 MiB: memcpy %.1f ms, copy_past_cache %.1f ms\n  hash, GB/s:", plain,
                past);
    uint64_t sink = 0;
    for (const size_t buffer : {size_t{256} << 10, size_t{8} << 20, size_t{64} << 20}) {
      char* b = touched(buffer);
      const size_t total = size_t{1} << 30, call = std::min(buffer, size_t{1} << 20);
      const auto t = std::chrono::steady_clock::now();
      for (size_t done = 0; done < total;) {
        for (size_t at = 0; at < buffer && done < total; at += call, done += call) {
          sink += shardload::checksum(b + at, call);
        }
      }
      std::printf(" %zu KiB buffer %.1f", buffer >> 10, total / ms_since(t) / 1e6);
      std::free(b);
    }
    std::printf(" (%d)\n", static_cast<int>(sink & 1));
  }
  std::free(stage);
  std::free(cold);
  ::close(fd);
  return 0;
}
